"""Peak memory per execution mode of a model's architecture, computed on the meta device.

    python scripts/memory_table.py ../shared/data/sdxl-base-config --canvas 1024
    python scripts/memory_table.py ../shared/data/sd21-base-config --canvas 512

Prints a Markdown table (GiB) for docs/performance.md; see sow.bench.memory for the model.
"""

from __future__ import annotations

import argparse
import json

import torch

from sow.bench.cost_model import meta_components
from sow.bench.memory import memory_table

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="tiny, tiny-sdxl or a folder of component configs")
    parser.add_argument("--canvas", type=int, default=1024)
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    from sow.bench.flow_cost import is_flow_folder

    if is_flow_folder(args.model):  # SD 3 / FLUX.1 / FLUX.2: sow.bench.flow_memory
        from sow.bench.flow_memory import flow_memory_table

        table = flow_memory_table(args.model, canvas=args.canvas, dtype=dtype)
        if args.json:
            print(json.dumps(table, indent=2))
            return
        print(f"| mode ({args.model}, {args.canvas}², {table['dtype']}, batch {table['batch']}) | peak GiB |")
        print("| --- | --- |")
        for mode, nbytes in table["modes"].items():
            print(f"| {mode} | {nbytes / GIB:.2f} |")
        return
    table = memory_table(meta_components(args.model), canvas=args.canvas, dtype=dtype)
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(f"| mode ({args.model}, {args.canvas}², {table['dtype']}) | peak GiB |")
    print("| --- | --- |")
    for mode, nbytes in table["modes"].items():
        print(f"| {mode} | {nbytes / GIB:.2f} |")
    print()
    print("| part | GiB |")
    print("| --- | --- |")
    for name, nbytes in {**{f"weights: {k}": v for k, v in table["weights"].items()},
                         **{f"activations: {k}": v for k, v in table["activation_peaks"].items()}}.items():
        print(f"| {name} | {nbytes / GIB:.2f} |")


if __name__ == "__main__":
    main()
