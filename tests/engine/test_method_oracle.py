"""The method checked against outside references, not against sow itself.

- ``Denoiser`` against diffusers' ``DDIMScheduler.step`` / ``DDIMInverseScheduler.step``
  (the timestep the UNet sees and the update), an implementation sow does not call.
- A whole 3-cycle run on a stub UNet: the sequence of (phase, level, timestep, alpha_from,
  alpha_to, eta, branches) written out by hand from DESIGN.md §2, the noise injections, the
  guided noise of every step (CFG / background guidance, from the equations) and where the
  condition region sits relative to box_v.

Alphas are recomputed here from SD's scaled-linear betas, not read from sow's schedule.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from sow.engine import diffusion_math as dm
from sow.engine.denoiser import Denoiser, PromptEmbeddings
from sow.models.loading import tiny_configs
from sow.pipeline import SOWPipeline
from sow.plugins import build_registry
from sow.schemas import Box, GenerationConfig, Plan

PROMPT = "a chef in a kitchen"


def sd_alphas_cumprod() -> torch.Tensor:
    """SD's training schedule (scaled_linear, beta 0.00085 .. 0.012, 1000 steps), in float64."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def t_of(level: int) -> int:
    """S = 10, leading spacing, steps_offset 1: level k sits at timestep 100 (k - 1) + 1."""
    return 100 * (level - 1) + 1


def alpha_of(level: int) -> float:
    acp = sd_alphas_cumprod()
    return float(acp[0]) if level == 0 else float(acp[t_of(level)])  # set_alpha_to_one = False


class StubUNet(torch.nn.Module):
    """eps = 0.5 tanh(x) + offset(branch) + 0.2 sin(t / 150): known, x- and t-dependent.

    Records every call: the timestep, the branches (as prompt names, matched against
    embeddings the test computed itself) and the latents it saw.
    """

    def __init__(self, embeddings: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so the pipeline finds a device
        self.embeddings = embeddings or {}
        self.offsets = {name: 0.1 * (i + 1) * (-1) ** i for i, name in enumerate(sorted(self.embeddings))}
        self.calls: list[SimpleNamespace] = []
        self.dtype = torch.float32

    def branch_name(self, context: torch.Tensor) -> str:
        if not self.embeddings:
            return "prompt"
        distances = {name: float((context - e).abs().max()) for name, e in self.embeddings.items()}
        name = min(distances, key=distances.get)
        assert distances[name] < 1e-4, distances
        return name

    def eps(self, x: torch.Tensor, t: float, branch: str) -> torch.Tensor:
        return 0.5 * torch.tanh(x) + self.offsets.get(branch, 0.0) + 0.2 * math.sin(t / 150)

    def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
        t = int(torch.as_tensor(timestep).item())
        chunks = encoder_hidden_states.shape[0]
        latents_per_branch = sample.shape[0] // chunks if chunks else 1
        branches = [self.branch_name(encoder_hidden_states[i : i + 1]) for i in range(0, chunks, latents_per_branch)]
        x = sample[:latents_per_branch]
        self.calls.append(SimpleNamespace(timestep=t, branches=tuple(branches), x=x.clone()))
        out = torch.cat([self.eps(x, t, b) for b in branches])
        return SimpleNamespace(sample=out)


# -- Denoiser against diffusers' DDIM ---------------------------------------------------------


def _denoiser(unet, eta_config: dict | None = None) -> tuple[Denoiser, GenerationConfig]:
    config = GenerationConfig(guidance_scale=1.0, inversion_guidance_scale=1.0, **(eta_config or {}))
    schedule = dm.LevelSchedule.from_scheduler(DDIMScheduler(**tiny_configs()["scheduler"]), 10)
    return Denoiser(unet, schedule, PromptEmbeddings(*(torch.zeros(1, 77, 8) for _ in range(5))), config), config


@pytest.mark.parametrize("eta", [0.0, 0.1, 1.0])
def test_denoise_matches_diffusers_ddim_step(eta):
    unet = StubUNet()
    denoiser, _ = _denoiser(unet)
    reference = DDIMScheduler(**tiny_configs()["scheduler"])
    reference.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64)
    for i, t in enumerate(reference.timesteps):
        level = 10 - i
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        ours = denoiser.denoise(x, level, "final", eta=eta, noise=noise if eta > 0 else None)
        assert unet.calls[-1].timestep == int(t) == t_of(level)  # the timestep the UNet sees
        eps = unet.eps(x, int(t), "prompt")
        expected = reference.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)  # diffusers keeps alphas in float32
        x = expected


def test_invert_matches_diffusers_ddim_inverse_step():
    unet = StubUNet()
    denoiser, _ = _denoiser(unet)
    reference = DDIMInverseScheduler.from_config(DDIMScheduler(**tiny_configs()["scheduler"]).config)
    reference.set_timesteps(10)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for level, t in enumerate(reference.timesteps):  # level -> level + 1, the UNet at t_(level+1)
        ours = denoiser.invert(x, level, "invert_canvas")
        assert unet.calls[-1].timestep == int(t) == t_of(level + 1)
        expected = reference.step(unet.eps(x, int(t), "prompt"), t, x).prev_sample
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)  # diffusers keeps alphas in float32
        x = expected


# -- a whole run on the stub UNet, against DESIGN.md §2 by hand -------------------------------

CANVAS = 128
BOX_V = Box(x=32, y=48, w=64, h=64)  # latent cells: rows 6..13, columns 4..11 (8-px cells)
ROWS, COLS = slice(6, 14), slice(4, 12)


def _embed(components, text: str) -> torch.Tensor:
    tok = components.tokenizer
    ids = tok([text], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return components.text_encoder(ids)[0]


@pytest.fixture(scope="module")
def stub_run(tiny_components, face_path):
    texts = {
        "prompt": PROMPT,
        "negative": GenerationConfig().negative_prompt,
        "empty": "",
        "suppress": "human face",
        "diverse": "a high quality and colorful image",
    }
    unet = StubUNet({name: _embed(tiny_components, text) for name, text in texts.items()})
    components = dataclasses.replace(tiny_components, unet=unet)
    pipe = SOWPipeline(components, stages={"modulator": "none"}, registry=build_registry(load_entry_points=False))
    plan = Plan(canvas={"width": CANVAS, "height": CANVAS}, box_v=BOX_V, box_r=Box(x=16, y=112, w=96, h=16), prompt=PROMPT)
    updates, injections, steps = [], [], []
    real_update, real_inject = dm.ddim_update, dm.inject_noise

    def update(x, eps, alpha_from, alpha_to, eta=0.0, noise=None):
        updates.append(SimpleNamespace(alpha_from=alpha_from, alpha_to=alpha_to, eta=eta, eps=eps.clone()))
        return real_update(x, eps, alpha_from, alpha_to, eta=eta, noise=noise)

    def inject(x, alpha_from, alpha_to, noise):
        injections.append((alpha_from, alpha_to))
        return real_inject(x, alpha_from, alpha_to, noise)

    mp = pytest.MonkeyPatch()
    mp.setattr(dm, "ddim_update", update)
    mp.setattr(dm, "inject_noise", inject)
    try:
        result = pipe(face_path, PROMPT, plan=plan, seed=0, cycles=3, canvas={"width": CANVAS, "height": CANVAS}, callback=steps.append)
    finally:
        mp.undo()
    return SimpleNamespace(unet=unet, updates=updates, injections=injections, steps=steps, result=result)


def _expected_sequence() -> list[tuple]:
    """(phase, level, timestep, alpha_from, alpha_to, eta, branches), by hand from DESIGN.md §2.

    Normal preset: t1 = 5, t2 = 7, N = 3 here, cycle eta 0, final eta 0.1; the inversions use
    CFG with the empty prompt, the cycles background guidance (batch of 4), the final phase CFG
    with the negative prompt. Inversion step k -> k+1 and denoising step k+1 -> k both evaluate
    the UNet at t_(k+1).
    """
    cfg_inv, bg, cfg = ("empty", "prompt"), ("negative", "prompt", "suppress", "diverse"), ("negative", "prompt")
    seq = []
    for phase, top in (("invert_condition", 7), ("invert_canvas", 5)):
        seq += [(phase, k + 1, t_of(k + 1), alpha_of(k), alpha_of(k + 1), 0.0, cfg_inv) for k in range(top)]
    for _cycle in range(3):
        seq += [("cycle", k, t_of(k), alpha_of(k), alpha_of(k - 1), 0.0, bg) for k in (7, 6)]
    seq += [("final", k, t_of(k), alpha_of(k), alpha_of(k - 1), 0.1, cfg) for k in (5, 4, 3, 2, 1)]
    return seq


def test_the_whole_run_follows_algorithm_1(stub_run):
    calls, updates, steps = stub_run.unet.calls, stub_run.updates, stub_run.steps
    assert len(calls) == len(updates) == len(steps) == 7 + 5 + 3 * 2 + 5
    observed = [
        (s["phase"], s["level"], c.timestep, u.alpha_from, u.alpha_to, u.eta, c.branches)
        for s, c, u in zip(steps, calls, updates, strict=True)
    ]
    expected = _expected_sequence()
    for got, want in zip(observed, expected, strict=True):
        assert got[:3] == want[:3] and got[6] == want[6], (got, want)
        assert got[3:6] == pytest.approx(want[3:6], rel=1e-6), (got, want)
    # the noise injection of every cycle: level t1 = 5 up to t2 = 7 in one jump
    assert [a for pair in stub_run.injections for a in pair] == pytest.approx([alpha_of(5), alpha_of(7)] * 3, rel=1e-6)


def test_guided_noise_follows_the_equations(stub_run):
    """CFG (scale 7.5) everywhere; in the cycles, outside box_v, uncond = neg + suppress - diverse."""
    unet, s = stub_run.unet, 7.5
    inside = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    inside[:, :, ROWS, COLS] = 1
    for call, update, step in zip(unet.calls, stub_run.updates, stub_run.steps, strict=True):
        e = {b: unet.eps(call.x, call.timestep, b) for b in call.branches}
        if step["phase"].startswith("invert"):
            want = e["empty"] + s * (e["prompt"] - e["empty"])
        elif step["phase"] == "cycle":
            outside = e["negative"] + e["suppress"] - e["diverse"] + s * (e["prompt"] - (e["negative"] + e["suppress"] - e["diverse"]))
            inside_eps = e["negative"] + s * (e["prompt"] - e["negative"])
            want = inside * inside_eps + (1 - inside) * outside
        else:
            want = e["negative"] + s * (e["prompt"] - e["negative"])
        torch.testing.assert_close(update.eps.double(), want.double(), rtol=1e-5, atol=1e-5)


def test_the_condition_region_sits_at_box_v(stub_run):
    """The cycle and t3 steps see the condition's own trajectory v_k inside box_v's cells, not elsewhere.

    v_k (k < t2) is what the condition's inversion fed the UNet at its (k+1)-th call.
    """
    calls, steps = stub_run.unet.calls, stub_run.steps
    v = {k: calls[k].x for k in range(7)}  # v_0 .. v_6, the condition alone (8x8 latents)
    assert v[0].shape[-2:] == (8, 8)
    canvas_calls = {(s["phase"], s["level"], s["cycle"]): c.x for s, c in zip(steps, calls, strict=True)}
    for key, level in ((("cycle", 6, 0), 6), (("cycle", 6, 2), 6), (("final", 4, None), 4), (("final", 3, None), 3)):
        x = canvas_calls[key]
        assert x.shape[-2:] == (16, 16)
        torch.testing.assert_close(x[:, :, ROWS, COLS], v[level].to(x.dtype))
        shifted = x[:, :, 7:15, 4:12]  # one cell lower: not the condition
        assert (shifted - v[level].to(x.dtype)).abs().max() > 1e-3
    # the final step t3 does not reset (level 2 is not in t3): the region has moved on
    assert (canvas_calls[("final", 2, None)][:, :, ROWS, COLS] - v[2]).abs().max() > 1e-3
    # the seeded canvas: the condition's pixels inside box_v, gray outside
    seeded = torch.from_numpy(np.asarray(stub_run.result.seeded_canvas).astype(np.int64))
    assert (seeded[:48] == 128).all() and (seeded[112:] == 128).all() and (seeded[:, :32] == 128).all()
    assert (seeded[48:112, 32:96] != 128).any(dim=-1).float().mean() > 0.5


def test_the_final_latents_equal_a_naive_algorithm_1(stub_run):
    """Algorithm 1 written out again here, naively (float64), on the same stub UNet and seed.

    The only inputs taken from the run are the VAE-encoded condition and canvas (the first
    inputs of the two inversions). The noise is drawn in the method's order from the seed's
    generator: one injection per cycle (the cycle phase has eta 0), one draw per final step.
    """
    unet = stub_run.unet
    v0 = unet.calls[0].x.double()
    canvas0 = unet.calls[7].x.double()
    s, eta = 7.5, 0.1

    def eps(x, level, branches):
        t = t_of(level)
        e = {b: unet.eps(x, t, b) for b in branches}
        if branches == ("empty", "prompt"):
            return e["empty"] + s * (e["prompt"] - e["empty"])
        if branches == ("negative", "prompt"):
            return e["negative"] + s * (e["prompt"] - e["negative"])
        inside = torch.zeros_like(x[:, :1])
        inside[:, :, ROWS, COLS] = 1
        bg = e["negative"] + (1 - inside) * (e["suppress"] - e["diverse"])
        return bg + s * (e["prompt"] - bg)

    def step(x, e, a_from, a_to, sigma=0.0, z=None):
        x0 = (x - math.sqrt(1 - a_from) * e) / math.sqrt(a_from)
        out = math.sqrt(a_to) * x0 + math.sqrt(1 - a_to - sigma**2) * e
        return out + sigma * z if sigma else out

    def invert(x, top):
        path = [x]
        for k in range(top):
            path.append(step(path[-1], eps(path[-1], k + 1, ("empty", "prompt")), alpha_of(k), alpha_of(k + 1)))
        return path

    v = invert(v0, 7)
    x = invert(canvas0, 5)[-1]
    generator = torch.Generator().manual_seed(0)

    def draw():
        return torch.randn((1, 4, 16, 16), generator=generator, dtype=torch.float32).double()

    def reset(x, k):
        x = x.clone()
        x[:, :, ROWS, COLS] = v[k]
        return x

    for _cycle in range(3):
        ratio = alpha_of(7) / alpha_of(5)
        x = math.sqrt(ratio) * x + math.sqrt(1 - ratio) * draw()
        for k in (7, 6):
            x = reset(x, k)
            x = step(x, eps(x, k, ("negative", "prompt", "suppress", "diverse")), alpha_of(k), alpha_of(k - 1))
        x = reset(x, 5)
    for k in (5, 4, 3, 2, 1):
        if k in (4, 3):
            x = reset(x, k)
        a_from, a_to = alpha_of(k), alpha_of(k - 1)
        sigma = eta * math.sqrt((1 - a_to) / (1 - a_from)) * math.sqrt(1 - a_from / a_to)
        x = step(x, eps(x, k, ("negative", "prompt")), a_from, a_to, sigma, draw())
    torch.testing.assert_close(stub_run.result.latents.double(), x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_guidance_switches_at_scale_one(scale):
    """Scale <= 1: one branch, no guidance (half the UNet batch); above: CFG, by hand."""
    names = ["prompt", "negative", "empty", "suppress", "diverse"]
    tensors = {n: torch.full((1, 77, 8), float(i)) for i, n in enumerate(names)}
    unet = StubUNet(tensors)
    config = GenerationConfig(guidance_scale=scale, inversion_guidance_scale=scale)
    schedule = dm.LevelSchedule.from_scheduler(DDIMScheduler(**tiny_configs()["scheduler"]), 10)
    denoiser = Denoiser(unet, schedule, PromptEmbeddings(*(tensors[n] for n in names)), config)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for phase, move, uncond in (("final", lambda: denoiser.denoise(x, 3, "final"), "negative"),
                                ("invert_canvas", lambda: denoiser.invert(x, 2, "invert_canvas"), "empty")):
        out = move()
        call = unet.calls[-1]
        e = {b: unet.eps(x, 201, b) for b in ("prompt", uncond)}
        if scale <= 1:
            assert call.branches == ("prompt",), phase
            want_eps = e["prompt"]
        else:
            assert call.branches == (uncond, "prompt"), phase
            want_eps = e[uncond] + scale * (e["prompt"] - e[uncond])
        a_from, a_to = (alpha_of(3), alpha_of(2)) if phase == "final" else (alpha_of(2), alpha_of(3))
        x0 = (x - math.sqrt(1 - a_from) * want_eps) / math.sqrt(a_from)
        torch.testing.assert_close(out, math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * want_eps, rtol=1e-5, atol=1e-6)
