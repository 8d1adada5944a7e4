"""The fast path computes what the reference settings compute, and batching changes nothing per image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sow

from sow.models.loading import load_components, resolve_dtype
from sow.models.performance import (
    REFERENCE,
    ModelOffload,
    PerformanceSettings,
    ReencodingEmbeddings,
    attention_kinds,
    decode_latents,
)
from sow.errors import NumericalError
from sow.pipeline import SOWPipeline

pytestmark = pytest.mark.usefixtures("isolated_registry")  # built-in stages only, whatever the venv holds

PROMPT = "a chef in a busy kitchen"
SAMPLE_FACE = Path(sow.__file__).parent / "data" / "sample_face.jpg"

FP32_TOLERANCE = 1e-4
"""Fast fp32 path vs the reference settings: max |difference| of the final latents / max |reference latent|
(measured 2.6e-6: SDPA and math attention differ only in rounding)."""
BF16_MAX_TOLERANCE = 0.10
BF16_MEAN_TOLERANCE = 0.05
"""bf16 vs the fp32 reference after the whole schedule (37 UNet calls at paper settings, CFG 7.5 amplifying
rounding): max |difference| / max |reference| and mean |difference| / mean |reference| (measured 0.032 / 0.027
on the tiny model at 256 px, 2 cycles)."""
BATCH_TOLERANCE = 1e-5
"""Image i of a batched run vs a single run with seed + i (measured 5.5e-7)."""


@pytest.fixture(scope="module")
def reference_run(tiny_components):
    """The tiny model with every optimisation off: fp32, math attention, prompts re-encoded per call."""
    pipe = SOWPipeline(tiny_components).optimize(REFERENCE)
    overrides = {"canvas": {"width": 256, "height": 256}, "cycles": 2}
    try:
        return pipe(SAMPLE_FACE, PROMPT, seed=3, **overrides)
    finally:
        pipe.optimize(PerformanceSettings())  # the session fixture goes back to the defaults


def _relative(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = (a.float() - b.float()).abs()
    return float(diff.max() / b.abs().max()), float(diff.mean() / b.abs().mean())


def test_fast_fp32_matches_reference(reference_run, tiny_pipe, face_path, fast_overrides):
    fast = tiny_pipe(face_path, PROMPT, seed=3, **fast_overrides)
    assert fast.record.unet_evaluations == reference_run.record.unet_evaluations == 7 + 5 + 2 * 2 + 5
    worst, _ = _relative(fast.latents, reference_run.latents)
    assert worst <= FP32_TOLERANCE


def test_bf16_matches_reference_within_tolerance(reference_run, face_path, fast_overrides):
    pipe = SOWPipeline(load_components("tiny", dtype="bf16")).optimize(PerformanceSettings())
    half = pipe(face_path, PROMPT, seed=3, **fast_overrides)
    assert half.latents.dtype == torch.bfloat16
    assert half.record.unet_evaluations == reference_run.record.unet_evaluations
    worst, mean = _relative(half.latents, reference_run.latents)
    assert worst <= BF16_MAX_TOLERANCE and mean <= BF16_MEAN_TOLERANCE
    assert worst > 0  # it really ran in another precision


@pytest.mark.parametrize("tau", [None, 0.0], ids=["paper-tau", "gate-open"])
def test_batched_images_match_single_runs(tiny_pipe, face_path, fast_overrides, tau):
    """With the paper's tau the gate stays closed on random weights; with tau = 0 it opens, and
    each image must still be gated on its own (R_c over its heads and CFG branches only)."""
    if tau is not None:
        fast_overrides = {**fast_overrides, "modulation": {"tau": tau}}
    batched = tiny_pipe(face_path, PROMPT, seed=11, num_images=2, **fast_overrides)
    assert batched.latents.shape[0] == 2 and len(batched.images) == 2 and batched.record.num_images == 2
    assert batched.image is batched.images[0]
    singles = [tiny_pipe(face_path, PROMPT, seed=11 + i, plan=batched.plan, **fast_overrides) for i in range(2)]
    for i, single in enumerate(singles):
        worst, _ = _relative(batched.latents[i : i + 1], single.latents)
        assert worst <= BATCH_TOLERANCE, f"image {i}"
        assert single.record.unet_evaluations == batched.record.unet_evaluations
    assert not torch.equal(batched.latents[0], batched.latents[1])  # variations, not copies


def test_compiled_unet_blocks_match_eager_and_do_not_recompile_per_batch(face_path):
    """``--compile`` (regional torch.compile, symbolic shapes) on CPU's inductor: same latents as
    eager with DAM's gate forced open, and a second batch size adds no compiled graph. ~50 s."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D
    from torch._dynamo.utils import counters

    components = load_components("tiny")  # its own copy: compiling changes the modules in place
    blocks = sum(isinstance(m, (ResnetBlock2D, FeedForward)) for m in components.unet.modules())
    run = {"canvas": {"width": 128, "height": 128}, "cycles": 1, "modulation": {"use_gate": False}}
    pipe = SOWPipeline(components, {"modulator": "dam"})
    eager = [pipe(face_path, PROMPT, seed=5, num_images=n, **run).latents for n in (1, 2)]
    pipe.optimize(PerformanceSettings(compile=True))
    assert pipe.applied_performance["compiled_blocks"] == blocks > 0
    first = pipe(face_path, PROMPT, seed=5, **run)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0 and counters["stats"]["calls_captured"] > 0  # the blocks really went through dynamo
    second = pipe(face_path, PROMPT, seed=5, num_images=2, **run)
    assert counters["stats"]["unique_graphs"] == graphs  # batch 2 reuses the symbolic-shape graphs
    for compiled, reference in zip((first.latents, second.latents), eager):
        worst, _ = _relative(compiled, reference)
        assert worst <= FP32_TOLERANCE


def test_num_images_must_be_positive(tiny_pipe, face_path, fast_overrides):
    from sow.errors import InputError

    with pytest.raises(InputError, match="num_images"):
        tiny_pipe(face_path, PROMPT, num_images=0, **fast_overrides)


def test_timings_split_cycles_and_final(tiny_pipe, face_path, fast_overrides):
    record = tiny_pipe(face_path, PROMPT, seed=1, **fast_overrides).record
    assert [t.name for t in record.timings] == ["plan", "encode", "inversion", "cycles", "final", "decode", "paste"]
    assert all(t.seconds >= 0 for t in record.timings)


def test_reencoding_embeddings_encode_at_every_read(tiny_components):
    from sow.engine.denoiser import PromptEmbeddings
    from sow.schemas import GenerationConfig

    config = GenerationConfig()
    cached = PromptEmbeddings.encode(tiny_components.text_encoder, tiny_components.tokenizer, config, PROMPT)
    again = ReencodingEmbeddings(tiny_components.text_encoder, tiny_components.tokenizer, config, PROMPT)
    for name in ("prompt", "negative", "empty", "suppress", "diverse"):
        assert torch.allclose(getattr(again, name), getattr(cached, name), atol=1e-5)
    assert again.encodings == 5
    with pytest.raises(AttributeError):
        again.nothing  # noqa: B018


def test_reference_settings_reencode_during_the_run(tiny_components, face_path, fast_overrides):
    pipe = SOWPipeline(tiny_components).optimize(REFERENCE)
    try:
        assert attention_kinds(tiny_components.unet) == {"AttnProcessor": len(tiny_components.unet.attn_processors)}
        seen = []
        original = tiny_components.text_encoder.forward
        handle = tiny_components.text_encoder.register_forward_hook(lambda *a: seen.append(1))
        try:
            record = pipe(face_path, PROMPT, seed=1, **fast_overrides).record
        finally:
            handle.remove()
        assert tiny_components.text_encoder.forward == original
        # inversion: 2 prompts per call; cycles: 4 (background guidance); final: 2
        cfg = record.config
        expected = 2 * (cfg.t2 + cfg.t1) + 4 * cfg.cycles * (cfg.t2 - cfg.t1) + 2 * cfg.t1
        assert len(seen) == expected
    finally:
        pipe.optimize(PerformanceSettings())
    assert attention_kinds(tiny_components.unet) == {"AttnProcessor2_0": len(tiny_components.unet.attn_processors)}


def test_auto_dtype_is_fp32_on_cpu_and_named_errors():
    from sow.errors import InputError

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(InputError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8")


def test_nan_guard():
    from sow.engine.numerics import require_finite

    require_finite(torch.ones(3), "x")
    with pytest.raises(NumericalError, match="NaN or inf in the latents"):
        require_finite(torch.tensor([1.0, float("nan")]), "the latents")


def test_decode_latents_guard_passes_finite_output(tiny_components):
    latents = torch.zeros(1, 4, 8, 8)
    out = decode_latents(tiny_components.vae, latents, nan_guard=True)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_model_offload_moves_one_model_at_a_time():
    """The hooks' bookkeeping (on CPU both devices are the CPU: the order of loads is what is checked)."""
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    x = torch.ones(1, 2)
    expected = b(a(x))
    offload = ModelOffload("cpu")
    offload.add("a", a)
    offload.add("b", b)
    assert offload.moves == []
    assert torch.equal(b(a(x)), expected)
    a(x)
    assert offload.moves == ["a", "b", "a"] and offload.resident is a
    offload.remove()
    b(x)
    assert offload.moves == ["a", "b", "a"]


def test_apply_reports_what_it_did(tiny_components):
    pipe = SOWPipeline(tiny_components)
    done = pipe.optimize(PerformanceSettings(vae_slicing=True), canvas_pixels=2048 * 2048).applied_performance
    try:
        assert done == {"attention": "sdpa", "channels_last": False, "vae_slicing": True, "vae_tiling": True}
        assert tiny_components.vae.use_slicing and tiny_components.vae.use_tiling
    finally:
        pipe.optimize(PerformanceSettings())
    assert not tiny_components.vae.use_slicing and not tiny_components.vae.use_tiling


def test_settings_forbid_unknown_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        PerformanceSettings(atention="math")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_on_gpu_matches(face_path, fast_overrides):  # pragma: no cover - run where a GPU is lent
    plain = SOWPipeline(load_components("tiny", device="cuda", dtype="fp32"))
    expected = plain(face_path, PROMPT, seed=2, **fast_overrides).latents
    offloaded = SOWPipeline(load_components("tiny", device="cuda", dtype="fp32")).optimize(PerformanceSettings(offload=True))
    got = offloaded(face_path, PROMPT, seed=2, **fast_overrides).latents
    assert got.device.type == "cuda"
    assert torch.allclose(got, expected, atol=1e-4)


def _count_host_syncs(pipe, cycles: int, use_gate: bool = False) -> int:  # pragma: no cover - needs CUDA
    """Synchronizing CUDA operations between the first and the last UNet evaluation of a run."""
    import warnings

    def watch(info):
        if info["evaluations"] == 1:
            torch.cuda.set_sync_debug_mode("warn")
        if info["evaluations"] == info["total"]:
            torch.cuda.set_sync_debug_mode("default")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe(
            SAMPLE_FACE,
            PROMPT,
            seed=1,
            canvas={"width": 256, "height": 256},
            cycles=cycles,
            modulation={"use_gate": use_gate},
            callback=watch,
        )
    torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_syncs_per_step_on_gpu():  # pragma: no cover - run where a GPU is lent
    """More cycles add UNet calls but no host synchronisations (DAM with its gate open, as benchmarked)."""
    pipe = SOWPipeline(load_components("tiny", device="cuda", dtype="auto")).optimize(PerformanceSettings(stage_sync=False))
    few = _count_host_syncs(pipe, 1)
    many = _count_host_syncs(pipe, 3)
    assert many == few
    # with the gate on, DAM keeps R_c on the device (sync_free="auto" on a GPU)
    assert _count_host_syncs(pipe, 3, use_gate=True) == _count_host_syncs(pipe, 1, use_gate=True)
