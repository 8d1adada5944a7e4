"""The cyclic scheduler's calls for each preset, against DESIGN.md §2 by hand (no model: recording collaborators)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sow.engine.scheduling import CyclicOneWayScheduler
from sow.schemas import GenerationConfig


class Recorder:
    """Stands in for the run context and its denoiser; records every call in order."""

    def __init__(self, config):
        self.config, self.log = config, []
        self.canvas_latents = torch.zeros(1, 4, 2, 2)
        self.denoiser = self
        # the schedule's noise injection (the seam the scheduler calls): the noise was drawn, logged, by noise_like
        self.schedule = SimpleNamespace(alpha=lambda level: 1.0 - level / 20, inject=lambda x, low, high, noise: x)

    def noise_like(self, x):
        self.log.append(("noise",))
        return torch.ones_like(x)

    def preserve(self, x, level):
        self.log.append(("preserve", level))
        return x

    def denoise(self, x, level, phase, eta=0.0, cycle=None, noise=None):
        self.log.append(("denoise", phase, level, cycle, eta, noise is not None))
        return x


def expected(t3, cycle_eta, final_eta=0.1, cycles=2):
    """DESIGN §2 steps 4-5 with t1 = 5, t2 = 7: the calls in order (noise drawn only where eta > 0)."""
    log = []
    for c in range(cycles):
        log.append(("noise",))  # the injection t1 -> t2
        for k in (7, 6):
            log.append(("preserve", k))
            if cycle_eta > 0:
                log.append(("noise",))
            log.append(("denoise", "cycle", k, c, cycle_eta, cycle_eta > 0))
        log.append(("preserve", 5))
    for k in (5, 4, 3, 2, 1):
        if k in t3:
            log.append(("preserve", k))
        if final_eta > 0:
            log.append(("noise",))
        log.append(("denoise", "final", k, None, final_eta, final_eta > 0))
    return log


@pytest.mark.parametrize("preset, t3, cycle_eta", [("normal", [4, 3], 0.0), ("attribute", [4], 0.1), ("style", [4], 1.0)])
def test_each_preset_calls_in_the_order_of_algorithm_1(preset, t3, cycle_eta):
    config = GenerationConfig.from_preset(preset, cycles=2)
    ctx = Recorder(config)
    CyclicOneWayScheduler().run(ctx)
    assert ctx.log == expected(t3, cycle_eta)


def test_deterministic_final_phase_draws_no_noise():
    config = GenerationConfig.from_preset("normal", cycles=1, final_eta=0.0)
    ctx = Recorder(config)
    CyclicOneWayScheduler().run(ctx)
    assert ctx.log == expected([4, 3], 0.0, final_eta=0.0, cycles=1)
