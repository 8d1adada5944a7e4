"""Model families: detection from configs, the tiny SDXL model's whole run, SD 1.5's shape.

Expected values are derived here from the configs (layer counts, UNet calls, time_ids), not
read from the code under test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from tests.support.sync_watch import SyncWatch

from sow.attention import dam
from sow.engine.context import RunContext
from sow.models.families import FamilyError, detect_family
from sow.models.loading import load_components
from sow.models.performance import PerformanceSettings
from sow.errors import InputError
from sow.pipeline import SOWPipeline

ROOT = Path(__file__).resolve().parents[2]
SDXL_CONFIG = next(
    (p for p in (r / "shared" / "data" / "sdxl-base-config" for r in (ROOT.parent, ROOT.parent.parent)) if p.is_dir()),
    ROOT.parent / "shared" / "data" / "sdxl-base-config",
)
PROMPT = "a chef in a busy kitchen"
RUN = {"seed": 3, "canvas": {"width": 128, "height": 128}, "cycles": 2}


def _json(folder: Path, name: str) -> dict:
    file = "scheduler_config.json" if name == "scheduler" else "config.json"
    return json.loads((folder / name / file).read_text())


def _self_attention_layers_by_hand(unet_config: dict) -> int:
    """attn1 layers of a UNet2DConditionModel: transformer layers of every cross-attention block."""
    n = len(unet_config["down_block_types"])
    per_block = unet_config.get("transformer_layers_per_block", 1)
    per_block = per_block if isinstance(per_block, list) else [per_block] * n
    layers = unet_config["layers_per_block"]
    down = sum(layers * t for kind, t in zip(unet_config["down_block_types"], per_block) if kind.startswith("CrossAttn"))
    mid = per_block[-1]
    up = sum((layers + 1) * t for kind, t in zip(unet_config["up_block_types"], reversed(per_block)) if kind.startswith("CrossAttn"))
    return down + mid + up


@pytest.fixture(scope="module")
def tiny_sdxl():
    return load_components("tiny-sdxl")


# -- detection ------------------------------------------------------------------------------


def test_the_real_configs_are_told_apart_by_structure(sd21_config):
    if not SDXL_CONFIG.is_dir():
        pytest.skip("SDXL configs not found")
    sd21 = detect_family(_json(sd21_config, "unet"), [_json(sd21_config, "text_encoder")])
    sdxl = detect_family(_json(SDXL_CONFIG, "unet"), [_json(SDXL_CONFIG, "text_encoder"), _json(SDXL_CONFIG, "text_encoder_2")])
    assert (sd21.name, sdxl.name) == ("sd2", "sdxl")
    assert sdxl.side_range() == (360, 512)  # 180..256 on 512, scaled to 1024
    assert sd21.side_range() == (180, 256)


def test_detection_never_reads_a_name_and_says_when_it_cannot():
    sd15 = {"cross_attention_dim": 768, "_name_or_path": "stabilityai/sdxl-looking-name"}
    assert detect_family(sd15, [{"hidden_size": 768}]).name == "sd1"
    with pytest.raises(FamilyError, match="pass --family") as err:
        detect_family({"cross_attention_dim": 640}, [{"hidden_size": 640}])
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    assert detect_family({"cross_attention_dim": 640}, [{"hidden_size": 640}], override="sd1").name == "sd1"
    with pytest.raises(FamilyError, match="does not fit"):
        detect_family({"cross_attention_dim": 640}, [{"hidden_size": 640}], override="sdxl")
    with pytest.raises(InputError, match="unknown model family"):
        detect_family({"cross_attention_dim": 640}, [{"hidden_size": 640}], override="sd3")


def test_family_override_from_the_cli_is_refused_in_one_line_when_it_does_not_fit(tmp_path, face_path, capsys):
    from sow.cli.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(face_path), PROMPT, "--model", "tiny", "--family", "sdxl", "--out", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "--family sdxl does not fit" in err and len(err.strip().splitlines()) == 1


# -- the tiny SDXL model -------------------------------------------------------------------


def test_tiny_sdxl_has_sdxl_structure(tiny_sdxl):
    unet = tiny_sdxl.unet
    assert tiny_sdxl.family.name == "sdxl"
    assert tiny_sdxl.text_encoder_2 is not None and tiny_sdxl.native_resolution == 1024
    widths = tiny_sdxl.text_encoder.config.hidden_size + tiny_sdxl.text_encoder_2.config.hidden_size
    assert unet.config.cross_attention_dim == widths
    assert not hasattr(unet.down_blocks[0], "attentions")  # no attention at the highest resolution
    lowest = unet.down_blocks[-1].attentions[0].transformer_blocks
    assert len(lowest) > len(unet.down_blocks[1].attentions[0].transformer_blocks)
    assert len(dam.self_attention_layers(unet)) == _self_attention_layers_by_hand(dict(unet.config)) == 11


@pytest.fixture(scope="module")
def sdxl_run(tiny_sdxl, face_path):
    """One full run on tiny-sdxl with DAM forced open, spying on the UNet calls, preservation and DAM."""
    unet_calls, dam_calls, checks = [], Counter(), []
    original_attention = dam.DAMState.attention
    original_preserve = RunContext.preserve

    def spy_attention(self, layer, query, key, value, grid):
        dam_calls[(layer, grid)] += 1
        return original_attention(self, layer, query, key, value, grid)

    def spy_preserve(self, latents, level):
        out = original_preserve(self, latents, level)
        rows, cols = self.region.slices
        target = self.condition_trajectory[level].expand(out.shape[0], -1, -1, -1)
        outside = torch.ones_like(out, dtype=torch.bool)
        outside[:, :, rows, cols] = False
        checks.append(torch.equal(out[:, :, rows, cols], target) and torch.equal(out[outside], latents[outside]))
        return out

    def record(_module, args, kwargs):
        added = kwargs["added_cond_kwargs"]
        unet_calls.append((tuple(args[0].shape), tuple(added["text_embeds"].shape), added["time_ids"].tolist()))

    handle = tiny_sdxl.unet.register_forward_pre_hook(record, with_kwargs=True)
    dam.DAMState.attention, RunContext.preserve = spy_attention, spy_preserve
    try:
        pipe = SOWPipeline(tiny_sdxl, {"modulator": "dam"})
        output = pipe(face_path, PROMPT, modulation={"use_gate": False}, **RUN)
    finally:
        dam.DAMState.attention, RunContext.preserve = original_attention, original_preserve
        handle.remove()
    return output, unet_calls, dam_calls, checks


def test_tiny_sdxl_whole_run_counts_its_unet_calls_from_the_config(sdxl_run):
    output, unet_calls, _, _ = sdxl_run
    cfg = output.record.config
    by_hand = cfg.t2 + cfg.t1 + cfg.cycles * (cfg.t2 - cfg.t1) + cfg.t1  # 7 + 5 + 2*2 + 5
    assert len(unet_calls) == output.record.unet_evaluations == by_hand == 21
    assert output.record.family == "sdxl"
    assert output.image.size == (128, 128) and torch.isfinite(output.latents).all()


def test_sdxl_added_conditioning_follows_each_call(sdxl_run, tiny_sdxl):
    _, unet_calls, _, _ = sdxl_run
    pooled = tiny_sdxl.text_encoder_2.config.projection_dim
    for latents, text_embeds, time_ids in unet_calls:
        rows = latents[0]
        assert text_embeds == (rows, pooled)
        h, w = latents[2] * 8, latents[3] * 8  # pixels of the latents being denoised, no crop
        assert time_ids == [[h, w, 0, 0, h, w]] * rows
    sizes = {(c[0][2], c[0][3]) for c in unet_calls}
    assert (16, 16) in sizes and len(sizes) == 2  # the canvas, and the condition at its own size
    assert {c[0][0] for c in unet_calls} == {2, 4}  # CFG pairs; background guidance's 4 in the cycles


def test_sdxl_region_is_replaced_exactly_at_every_preservation(sdxl_run):
    output, _, _, checks = sdxl_run
    cfg = output.record.config
    assert len(checks) == cfg.cycles * (cfg.t2 - cfg.t1 + 1) + len(cfg.t3)
    assert all(checks)


def test_dam_runs_on_every_self_attention_layer_on_sdxl_grids(sdxl_run, tiny_sdxl):
    output, _, dam_calls, _ = sdxl_run
    cfg = output.record.config
    layers = dam.self_attention_layers(tiny_sdxl.unet)
    assert {layer for layer, _ in dam_calls} == set(layers)
    # 16x16 latents: no attention at 16x16 (SDXL's top level), only at 8x8 and 4x4
    assert {grid for _, grid in dam_calls} == {(8, 8), (4, 4)}
    steps = cfg.cycles * (cfg.t2 - cfg.t1)
    assert all(n == steps for n in dam_calls.values())


def test_tiny_sdxl_loop_reads_nothing_on_the_host(tiny_sdxl, face_path):
    pipe = SOWPipeline(tiny_sdxl, {"modulator": "dam"}, stage_options={"modulator": {"sync_free": True}})
    pipe.optimize(PerformanceSettings(stage_sync=False))
    watch = SyncWatch()
    try:
        with watch:
            pipe(face_path, PROMPT, finite_check="deferred", callback=watch.callback, **RUN)
    finally:
        pipe.optimize(PerformanceSettings())
    assert watch.seen == Counter()


def test_sdxl_box_scales_with_the_canvas_and_tiny_sdxl_defaults_small(tiny_sdxl):
    config = SOWPipeline(tiny_sdxl).make_config(canvas={"width": 1024, "height": 1024})  # SDXL's native canvas
    assert tiny_sdxl.native_resolution == 1024 and config.side_limits() == (360, 512)
    small = SOWPipeline(tiny_sdxl).make_config()  # random weights, noise images: not 8 minutes of CPU at 1024
    assert (small.canvas.width, small.canvas.height) == (512, 512) and small.side_limits() == (180, 256)


def test_fp16_sdxl_vae_decodes_in_fp32(tiny_sdxl):
    from sow.models.performance import decode_latents

    vae = tiny_sdxl.vae
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = []
    handle = vae.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    vae.to(torch.float16)
    try:
        decode_latents(vae, latents, upcast=tiny_sdxl.vae_needs_fp32)
    finally:
        vae.to(torch.float32)
        handle.remove()
    assert seen == [torch.float32]


# -- SD 1.5's shape --------------------------------------------------------------------------


def test_sd15_shape_from_configs_is_detected_and_runs(tmp_path, face_path):
    """Cross-attention 768 and a CLIP ViT-L-wide text encoder (one layer): detected sd1, runs end to end."""
    from sow.models.loading import tiny_configs

    configs = tiny_configs()
    unet = {**configs["unet"], "cross_attention_dim": 768}
    text = {**configs["text_encoder"], "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
            "num_hidden_layers": 1, "projection_dim": 768}
    for name, cfg in {"unet": unet, "vae": configs["vae"], "text_encoder": text}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"]))
    components = load_components(str(tmp_path), random_weights=True)
    assert components.family.name == "sd1" and components.text_encoder_2 is None
    output = SOWPipeline(components)(face_path, PROMPT, seed=0, canvas={"width": 64, "height": 64}, cycles=1)
    assert output.record.family == "sd1" and output.record.unet_evaluations == 7 + 5 + 2 + 5
    assert torch.isfinite(output.latents).all()


# -- the real SDXL architecture ----------------------------------------------------------------


def _sdxl_config_or_skip() -> Path:
    if not (SDXL_CONFIG / "unet" / "config.json").is_file():
        pytest.skip(f"SDXL-base configs not found at {SDXL_CONFIG}")
    return SDXL_CONFIG


@pytest.mark.slow
def test_count_only_on_the_sdxl_configs_uses_sdxl_shapes(tmp_path):
    """`sow bench --count-only` on SDXL-base's configs: meta-device counting, SDXL's widths in every UNet call."""
    from sow.cli.commands import main

    folder = _sdxl_config_or_skip()
    out = tmp_path / "cost.json"
    try:
        main(["bench", "--count-only", "--model", str(folder), "--size", "256", "--cycles", "2", "--json", str(out), "--quiet"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 0
    report = json.loads(out.read_text())
    assert report["unet_evaluations"] == 7 + 5 + 2 * 2 + 5
    unet_calls = [c for c in report["per_call"] if c["module"] == "unet"]
    assert unet_calls and all(c["shapes"][1][-1] == 2048 and c["shapes"][2][-1] == 1280 for c in unet_calls)
    assert {c["module"] for c in report["per_call"]} >= {"text_encoder", "text_encoder_2", "vae_decoder"}
    # on the canvas grid (32x32 latents) the cost is linear in the batch: CFG's 2 and background guidance's 4
    full = {c["shapes"][0][0]: c["tflop_per_call"] for c in unet_calls if c["shapes"][0][-2:] == [32, 32]}
    assert set(full) == {2, 4} and full[4] == pytest.approx(2 * full[2], rel=1e-3)


def _available_gib() -> float:
    """MemAvailable from /proc/meminfo (0 where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


HEAVY_GIB = 14
"""The real SDXL build peaks near 10 GB (fp32 init, then bf16); below this much free memory it is skipped."""


@pytest.mark.slow
@pytest.mark.skipif(
    _available_gib() < HEAVY_GIB and __import__("os").environ.get("SOW_HEAVY_TESTS") != "1",
    reason=f"builds the real 2.6B-parameter SDXL UNet on the CPU (peak ~10 GB): needs {HEAVY_GIB} GiB of free memory "
    "(SOW_HEAVY_TESTS=1 forces it); 81 s on an idle 2-core machine",
)
def test_real_sdxl_architecture_whole_run_at_64px_on_cpu(face_path):
    """The real SDXL-base architecture (random weights), bf16, 64x64 canvas, one cycle, DAM forced open."""
    folder = _sdxl_config_or_skip()
    components = load_components(str(folder), device="cpu", dtype="bf16", random_weights=True)
    assert components.family.name == "sdxl"
    layers = dam.self_attention_layers(components.unet)
    assert len(layers) == _self_attention_layers_by_hand(_json(folder, "unet")) == 70
    seen = set()
    original = dam.DAMState.attention

    def spy(self, layer, query, key, value, grid):
        seen.add(layer)
        return original(self, layer, query, key, value, grid)

    dam.DAMState.attention = spy
    try:
        pipe = SOWPipeline(components, {"modulator": "dam"}, stage_options={"modulator": {"sync_free": True}})
        output = pipe(face_path, PROMPT, seed=0, canvas={"width": 64, "height": 64}, cycles=1,
                      modulation={"use_gate": False}, finite_check="deferred")
    finally:
        dam.DAMState.attention = original
    assert seen == set(layers)
    assert output.record.unet_evaluations == 7 + 5 + 2 + 5 and torch.isfinite(output.latents.float()).all()
