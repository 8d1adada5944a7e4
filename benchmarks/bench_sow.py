#!/usr/bin/env python
"""Benchmark SOW generation: the same as `sow bench` (options: --help).

GPU reproduction (SD 2.1-base architecture, random weights, paper settings, DAM with its gate open):

    python benchmarks/bench_sow.py --model ../shared/data/sd21-base-config --random-weights \
        --device cuda --dtype bf16 --batch 1,8 --json bench-h100.json --plot bench-h100.png

See docs/performance.md for what each number means.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sow.cli.commands import main  # noqa: E402

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
