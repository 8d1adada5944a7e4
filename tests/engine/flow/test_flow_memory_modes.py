"""Memory modes on a flow family (issue 25): model and sequential offload (accelerate's hooks) give the
resident model's outputs exactly; fp8 and int8 weights store the linear layers in one byte and stay close
to it; the settings go through ``SOWPipeline.optimize`` like the UNets'; what needs CUDA says so in one line.

On the CPU both "devices" of an offload are the CPU: what is checked is the wiring (hooks, the order
models are loaded in, weights away from the module while it waits) and that nothing changes a number.
Each test works on its own deep copy of the tiny FLUX.1 model's modules (built once per session).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from sow.engine.backbone import batch_conditioning
from sow.engine.flow.flux1 import Flux1Backbone
from sow.errors import InputError
from sow.models.backbone_performance import apply_to_backbone, offload_backbone, sequential_offload_backbone
from sow.models.performance import PerformanceSettings
from sow.models.weight_formats import weight_storage_bytes
from sow.pipeline import SOWPipeline
from sow.models.flow.tiny import TINY_TEXT_LENGTH
from tests.support.flow_models import PROMPT, flow_backbone


def fresh() -> Flux1Backbone:
    """A tiny FLUX.1 backbone over a deep copy of the session's modules (the copy may be offloaded or converted)."""
    return Flux1Backbone(copy.deepcopy(flow_backbone("tiny-flux").components), TINY_TEXT_LENGTH)


def outputs(backbone) -> dict[str, torch.Tensor]:
    """Every network of the backbone once: the text encoders, the transformer (batch 2), the VAE both ways."""
    latents = torch.randn(1, backbone.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        prompts = backbone.encode_prompts({"prompt": PROMPT, "empty": ""})
        velocity = backbone.predict(latents, torch.tensor(700.0), batch_conditioning(prompts, ["prompt", "empty"], 1)).output
        return {
            **{f"text {key}": value for key, value in prompts["prompt"].items()},
            "text": prompts["prompt"]["encoder_hidden_states"],
            "velocity": velocity,
            "encoded": backbone.encode_image(pixels),
            "decoded": backbone.decode_latents(latents[:, :, :8, :8]),
        }


@pytest.fixture(scope="module")
def resident():
    return outputs(flow_backbone("tiny-flux"))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_model_offload_loads_one_model_at_a_time_and_changes_nothing(resident):
    backbone = fresh()
    offload = offload_backbone(backbone, "cpu")
    got = outputs(backbone)
    for key, value in resident.items():
        assert torch.equal(got[key], value), key
    # prompts (CLIP, then T5), the transformer, then the VAE's encoder and decoder: each model loaded when its
    # turn came, the one before sent back
    assert offload.moves == ["text_encoder", "text_encoder_2", "transformer", "vae"]
    assert offload.resident is backbone.vae
    assert backbone.device == torch.device("cpu")
    offload.remove()
    assert not hasattr(backbone.transformer, "_hf_hook")


def test_sequential_offload_keeps_weights_off_the_modules_and_changes_nothing(resident):
    from sow.engine.fingerprint import weights_fingerprint

    backbone = fresh()
    reference = {n: p.clone() for n, p in backbone.transformer.named_parameters()}
    fingerprint = weights_fingerprint(backbone)
    offload = sequential_offload_backbone(backbone, "cpu")
    assert weights_fingerprint(backbone) == fingerprint  # the run record names the same model
    assert {p.device.type for p in backbone.transformer.parameters()} == {"meta"}  # the CPU copy is in the hooks' state dict
    assert backbone.device == torch.device("cpu")  # the execution device, not the weights' meta
    got = outputs(backbone)
    for key, value in resident.items():
        assert torch.equal(got[key], value), key
    # one call of each network: (nearly) every layer with weights of its own loaded them once (a model's
    # unused layers, such as the VAE's encoder-side ones the decoder skips, never are)
    assert offload.modules > 100 and 0.9 * offload.modules < offload.loads <= offload.modules
    offload.remove()
    restored = dict(backbone.transformer.named_parameters())
    assert all(torch.equal(restored[n], p) for n, p in reference.items())


@pytest.mark.parametrize("weight_format, dtype", [("fp8", torch.float8_e4m3fn), ("int8", torch.int8)])
def test_eight_bit_weights_store_the_linear_layers_in_one_byte(resident, weight_format, dtype):
    backbone = fresh()
    before = weight_storage_bytes(backbone.transformer)
    linears = [m for m in backbone.transformer.modules() if isinstance(m, torch.nn.Linear)]
    done = apply_to_backbone(backbone, PerformanceSettings(weight_format=weight_format))
    assert done["weight_format"] == weight_format and done["layers_converted"] > len(linears) // 2
    stored = [p for p in backbone.transformer.parameters() if p.dtype == dtype]
    assert sum(p.numel() for p in stored) > 0.7 * sum(p.numel() for p in backbone.transformer.parameters())
    assert weight_storage_bytes(backbone.transformer) < 0.45 * before  # fp32 -> 1 byte for most of the weights
    assert backbone.dtype == torch.float32  # computed in the run's dtype
    got = outputs(backbone)
    assert torch.equal(got["decoded"], resident["decoded"])  # the VAE is never converted
    for key in ("text", "velocity"):
        error = _relative(got[key], resident[key])
        assert 0 < error < 0.1, (key, error)  # rounded weights: close, not equal


def test_the_settings_go_through_optimize_on_a_flow_pipeline(resident, caplog):
    pipe = SOWPipeline(fresh())
    with caplog.at_level(logging.INFO, logger="sow.models.backbone_performance"):
        done = pipe.optimize(PerformanceSettings(attention="math", offload=True, vae_slicing=True)).applied_performance
    assert done == {"attention": "math", "vae_slicing": True, "vae_tiling": False}  # no offload where there is no GPU
    assert "nothing to offload to" in caplog.text
    assert pipe.backbone.attention_kernel == "math" and pipe.backbone.vae.use_slicing
    math = outputs(pipe.backbone)["velocity"]
    assert _relative(math, resident["velocity"]) < 1e-5  # another kernel, the same attention
    pipe.optimize(PerformanceSettings())
    assert pipe.backbone.attention_kernel == "sdpa" and not pipe.backbone.vae.use_slicing
    assert pipe.enable_vae_tiling().backbone.vae.use_tiling and not pipe.disable_vae_tiling().backbone.vae.use_tiling


def test_what_cannot_run_says_so_in_one_line():
    pipe = SOWPipeline(fresh())
    with pytest.raises(InputError, match="choose one"):
        pipe.optimize(PerformanceSettings(offload=True, sequential_offload=True))
    with pytest.raises(InputError, match="int8 weights cannot be offloaded"):
        pipe.optimize(PerformanceSettings(offload=True, weight_format="int8"))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device") as err:
            pipe.enable_model_cpu_offload()
        assert "\n" not in str(err.value)
        with pytest.raises(InputError, match="no CUDA device"):
            pipe.enable_sequential_cpu_offload()
    from tests.models.test_performance import load_components

    with pytest.raises(InputError, match="applies to the flow families"):
        SOWPipeline(load_components("tiny")).optimize(PerformanceSettings(weight_format="fp8"))


def test_a_whole_run_under_each_offload_gives_the_resident_image(face_path):
    """The full pipeline (plan, inversion, cycles, decode) on tiny-flux: model and sequential offload
    through ``SOWPipeline``'s diffusers-style methods give the resident run's latents exactly. ~7 s."""
    def run(pipe):
        config = pipe.make_config(None, "normal", canvas={"width": 128, "height": 128}, cycles=1)
        return pipe(face_path, PROMPT, seed=1, config=config).latents

    expected = run(SOWPipeline(fresh()))
    model = SOWPipeline(fresh()).enable_model_cpu_offload(device="cpu")
    assert torch.equal(run(model), expected)
    assert model.performance.offload and {"transformer", "vae", "text_encoder"} <= set(model._offload.moves)
    sequential = SOWPipeline(fresh()).enable_sequential_cpu_offload(device="cpu")
    assert torch.equal(run(sequential), expected)
    assert sequential.performance.sequential_offload


def test_the_meta_memory_model_counts_what_the_modes_really_store(tmp_path):
    """The meta-device table (sow/bench/flow_memory.py) against the tiny model's real modules: its 8-bit
    weights are what int8 conversion stores, and its sequential peak is the largest layer's own
    parameters + the buffers + the largest activation peak."""
    from sow.bench.flow_memory import _buffer_bytes, _largest_layer, _linear_params, flow_memory_table
    from tests.support.flow_models import write_config_folder

    backbone = fresh()
    transformer = backbone.transformer
    full = weight_storage_bytes(transformer)  # fp32: 4 bytes a value
    modelled = full - 3 * _linear_params(transformer)
    apply_to_backbone(backbone, PerformanceSettings(weight_format="int8"))
    assert weight_storage_bytes(transformer) == modelled

    table = flow_memory_table(str(write_config_folder("tiny-flux", tmp_path / "tiny-flux")), canvas=128, dtype=torch.float32)
    modes, peaks = table["modes"], table["activation_peaks"]
    assert modes["sequential offload"] == table["largest_layer"] + table["buffers"] + max(peaks.values())
    assert table["largest_layer"] == max(_largest_layer(m, torch.float32) for m in fresh().components.values()
                                         if isinstance(m, torch.nn.Module))
    assert table["buffers"] == sum(_buffer_bytes(m) for m in fresh().components.values() if isinstance(m, torch.nn.Module))
    assert modes["sequential offload"] < modes["resident"] and modes["model offload"] < modes["resident"]
    assert modes["8-bit weights, model offload"] < modes["model offload"] and modes["8-bit weights, resident"] < modes["resident"]


def test_compile_wraps_the_transformers_feed_forward_blocks_only():
    """Regional compile on a flow transformer: every FeedForward block wrapped (lazily: nothing is compiled
    until a call), the attention modules left eager so DAM's processor swaps never recompile."""
    from diffusers.models.attention import FeedForward

    backbone = fresh()
    done = apply_to_backbone(backbone, PerformanceSettings(compile=True))
    blocks = [m for m in backbone.transformer.modules() if isinstance(m, FeedForward)]
    assert done["compiled_blocks"] == len(blocks) > 0
    assert all(getattr(m, "_compiled_call_impl", None) is not None for m in blocks)
    attention = [m for m in backbone.transformer.modules() if hasattr(m, "processor")]
    assert attention and all(getattr(m, "_compiled_call_impl", None) is None for m in attention)


def test_a_pipeline_spec_carries_the_memory_modes_to_every_worker():
    """What a Ray actor or a torchrun rank loads (``PipelineSpec.load``) gets the same settings applied."""
    from sow.pipeline import PipelineSpec

    pipe = PipelineSpec(model="tiny-flux", device="cpu", performance=(("weight_format", "fp8"), ("attention", "math"))).load()
    assert pipe.applied_performance["weight_format"] == "fp8" and pipe.backbone.attention_kernel == "math"
    assert any(p.dtype == torch.float8_e4m3fn for p in pipe.backbone.transformer.parameters())
    assert not hasattr(PipelineSpec(model="tiny-flux", device="cpu").load(), "applied_performance")  # nothing asked, nothing applied


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux2", "tiny-qwen-image", "tiny-z-image"])
def test_every_flow_family_runs_under_model_offload_and_in_fp8(name):
    """The other flow families through the same doors: model offload changes no number, fp8 weights stay close."""
    loaded = SOWPipeline.from_pretrained(name).backbone
    expected = outputs(loaded)
    offloaded = copy.deepcopy(loaded)
    offload = offload_backbone(offloaded, "cpu")
    got = outputs(offloaded)
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert "transformer" in offload.moves and "vae" in offload.moves
    apply_to_backbone(loaded, PerformanceSettings(weight_format="fp8"))
    assert any(p.dtype == torch.float8_e4m3fn for p in loaded.transformer.parameters())
    assert 0 < _relative(outputs(loaded)["velocity"], expected["velocity"]) < 0.1
