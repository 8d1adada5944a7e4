"""Interleaved timing of one tiny-flux transformer call (batch 2, 32x32 latent grid) per memory mode, CPU, 1 thread.

    PYTHONPATH=$PWD python benchmarks/flow_modes_cpu.py

On the CPU both offload "devices" are the CPU: the times show the hooks' overhead, not transfers; the
stored bytes show what fp8 / int8 keep of the fp32 transformer. Random tiny weights: not a quality measure."""
import copy
import statistics
import time

import torch

torch.set_num_threads(1)
from tests.flow_models import flow_backbone, PROMPT
from sow.engine.flow.flux1 import Flux1Backbone
from sow.models.flow.tiny import TINY_TEXT_LENGTH
from sow.engine.backbone import batch_conditioning
from sow.models.backbone_performance import apply_to_backbone, offload_backbone, sequential_offload_backbone
from sow.models.performance import PerformanceSettings
from sow.models.weight_formats import weight_storage_bytes
base = flow_backbone("tiny-flux")
def fresh(): return Flux1Backbone(copy.deepcopy(base.components), TINY_TEXT_LENGTH)
modes = {"resident": fresh()}
b = fresh(); offload_backbone(b, "cpu"); modes["model offload"] = b
b = fresh(); sequential_offload_backbone(b, "cpu"); modes["sequential offload"] = b
for f in ("fp8", "int8"):
    b = fresh(); apply_to_backbone(b, PerformanceSettings(weight_format=f)); modes[f] = b
x = torch.randn(1, 16, 32, 32)
cond = {k: batch_conditioning(m.encode_prompts({"p": PROMPT, "e": ""}), ["p", "e"], 1) for k, m in modes.items()}
times = {k: [] for k in modes}
with torch.no_grad():
    for rep in range(7):
        for k, m in modes.items():
            t = time.perf_counter(); m.predict(x, torch.tensor(500.), cond[k]); times[k].append(time.perf_counter() - t)
r = statistics.median(times["resident"][1:])
for k, v in times.items():
    med = statistics.median(v[1:]); print(f"{k:20s} {med*1000:7.1f} ms  x{med/r:.2f}")
for k in ("resident", "fp8", "int8"):
    print(k, "transformer stored bytes", weight_storage_bytes(modes[k].transformer))
