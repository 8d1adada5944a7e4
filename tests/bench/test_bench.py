"""`sow bench` on the tiny model: the report's fields, the chart, the FLOP counter, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sow.bench.flops import count_flops, flop_counter
from sow.bench.timing import STAGES
from sow.cli.commands import main

def run_cli(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = run_cli(
        [
            "bench", "--model", "tiny", "--device", "cpu", "--size", "128", "--cycles", "2",
            "--warmup", "0", "--repeats", "2", "--ddim-steps", "3", "--batch", "1,2",
            "--json", str(out / "bench.json"), "--plot", str(out / "bench.png"), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    return json.loads((out / "bench.json").read_text()), out / "bench.png"


def test_report_fields(report):
    data, _ = report
    assert data["model"] == "tiny" and data["device"]["type"] == "cpu" and data["dtype"] == "float32"
    assert data["config"]["modulator"] == "dam" and data["config"]["dam_gate"] is False
    phases = data["unet_calls_per_phase"]
    assert phases == {"invert_condition": 7, "invert_canvas": 5, "cycle": 2 * 2, "final": 5}
    assert data["unet_evaluations"] == sum(phases.values()) == 21
    assert [run["batch"] for run in data["runs"]] == [1, 2]
    for run in data["runs"]:
        spi = run["seconds_per_image"]
        assert 0 < spi["min"] <= spi["median"] <= spi["max"]
        assert len(run["seconds_per_run"]) == 2
        assert list(run["stages_seconds_per_image"]) == list(STAGES)
        assert sum(run["stages_seconds_per_image"].values()) <= spi["max"] * 1.05
        assert run["unet_evaluations"] == 21
        assert run["tflop_per_image"] > run["unet_tflop_per_image"] > 0
        assert run["effective_tflops"] == pytest.approx(run["tflop_per_image"] / spi["median"])
        assert run["peak_memory"]["bytes"] > 0 and "rss" in run["peak_memory"]["kind"]
        assert run["speedup_vs_reference"] > 0
    flops = data["flops"]
    assert flops["modulation_extra_tflop"] > 0  # DAM's row statistics and extra head dimensions are counted
    dam = data["dam"]  # and timed: one cycle-phase UNet call with and without it
    assert dam["gate"] == "forced open" and dam["attention_batch"] == 4
    assert dam["ratio"] == pytest.approx(dam["unet_call_seconds"]["dam"] / dam["unet_call_seconds"]["none"])
    assert 0 < dam["modulated_rows"] < 1 and len(dam["seconds"]["none"]) == len(dam["seconds"]["dam"]) >= 3
    plan = data["plan"]  # planned once, timed on its own
    assert plan["planner"] == "heuristic" and len(plan["seconds"]["runs"]) == 2 and plan["seconds"]["median"] > 0
    for run in data["runs"]:
        assert run["stages_seconds_per_image"]["plan"] < plan["seconds"]["median"]
    unet_calls = sum(c["calls"] for c in flops["per_call"] if c["module"] == "unet")
    assert unet_calls == 21


def test_report_baselines(report):
    data, _ = report
    ddim = data["baselines"]["ddim"]
    assert ddim["steps"] == 3 and ddim["seconds_per_image"]["median"] > 0
    assert ddim["sow_over_ddim"] == pytest.approx(data["runs"][0]["seconds_per_image"]["median"] / ddim["seconds_per_image"]["median"])
    reference = data["baselines"]["reference"]
    assert reference["same_unet_evaluations"]
    variants = [entry["variant"] for entry in reference["ladder"]]
    assert variants[:3] == ["reference", "+ cached text embeddings", "+ sdpa attention"]
    assert reference["ladder"][0]["speedup_vs_reference"] == 1.0
    assert reference["ladder"][0]["cache_text_embeddings"] is False and reference["ladder"][0]["attention"] == "math"
    assert "interleaved" in reference["note"] and variants[3:] == ["fast path (float32), batch 1", "fast path (float32), batch 2"]
    for run, entry in zip(data["runs"], reference["ladder"][3:]):
        assert run["speedup_vs_reference"] == entry["speedup_vs_reference"]  # from the interleaved rounds
    assert any("GPU" in line for line in data["not_measured"])


def test_plot_is_a_bar_chart(report):
    from sow.viz.bench_chart import DDIM_COLOR, STAGE_COLORS

    _, png = report
    image = Image.open(png)
    assert image.format == "PNG" and image.width >= 900
    image = image.convert("RGB")
    # count the bars: runs of rows holding the "cycles" colour (3 ladder rungs + 2 batch sizes), one DDIM bar
    def bars(color):
        rows = [any(image.getpixel((x, y)) == color for x in range(0, image.width, 2)) for y in range(image.height)]
        return sum(1 for y in range(1, len(rows)) if rows[y] and not rows[y - 1])

    assert bars(STAGE_COLORS["cycles"]) == 5 + 1  # + its legend swatch
    assert bars(DDIM_COLOR) == 1 + 1


def test_flop_count_of_sd21_unet_matches_the_issue(sd21_config):
    """One SD 2.1-base UNet pass at 64x64 latents is ~0.80 TFLOP per sample (402 GMAC)."""
    from collections import Counter
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import torch

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd21_config / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(sd21_config / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(sd21_config / "text_encoder"))
    components = SimpleNamespace(unet=unet, vae=vae, text_encoder=text)
    calls = Counter({("unet", ((2, 4, 64, 64), (2, 77, 1024))): 3})
    counted = count_flops(components, calls)
    per_sample = counted.per_call[0].tflop_per_call / 2
    assert per_sample == pytest.approx(0.804, rel=0.01)
    assert counted.tflop["unet"] == pytest.approx(3 * 2 * per_sample)


def test_flop_counter_counts_cpu_attention():
    import torch
    import torch.nn.functional as F

    q = torch.randn(1, 2, 64, 8)
    with flop_counter() as counter:
        F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 2 * 64 * 64 * 8)  # QK^T and AV


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch", "0"], "--batch sizes must be >= 1"),
        (["--size", "100"], "--size must be a multiple of 8"),
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--modulator", "nope"], "nope"),
        (["--model", "/nonexistent/folder"], "not found"),
    ],
)
def test_bad_options_one_line_error(argv, message, capsys):
    code = run_cli(["bench", "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_flag_is_a_usage_error(capsys):
    assert run_cli(["bench", "--no-such-flag"]) == 2
    assert "No such option: --no-such-flag" in capsys.readouterr().err


def test_help_lists_options(capsys):
    assert run_cli(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--batch", "--random-weights", "--compile", "--json", "--plot", "--ddim-steps", "--offload"):
        assert flag in out


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_an_existing_report_is_not_overwritten(tmp_path, capsys, flag):
    earlier = tmp_path / "earlier-report"
    earlier.write_text("an earlier run's report")
    code = run_cli(["bench", "--model", "tiny", "--device", "cpu", flag, str(earlier)])
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert earlier.read_text() == "an earlier run's report"


def test_overwrite_replaces_an_existing_report(tmp_path):
    earlier = tmp_path / "bench.json"
    earlier.write_text("{}")
    argv = ["bench", "--model", "tiny", "--device", "cpu", "--size", "64", "--cycles", "1", "--warmup", "0"]
    argv += ["--repeats", "1", "--ddim-steps", "0", "--no-reference", "--quiet", "--json", str(earlier), "--overwrite"]
    assert run_cli(argv) == 0
    assert json.loads(earlier.read_text())["model"] == "tiny"


def test_count_only_matches_the_cost_model_in_the_docs(sd21_config, tmp_path):
    """`sow bench --count-only` on SD 2.1-base's configs gives the totals docs/performance.md shows."""
    import re

    out = tmp_path / "cost.json"
    assert run_cli(["bench", "--count-only", "--model", str(sd21_config), "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["unet_evaluations"] == 37
    docs = (Path(__file__).resolve().parents[2] / "docs" / "performance.md").read_text(encoding="utf-8")
    documented = float(re.search(r"^\| \*\*total\*\* \|.*\*\*([\d.]+)\*\* \|$", docs, re.M).group(1))
    assert round(report["total_tflop"], 1) == documented
    full_size = [c for c in report["per_call"] if c["module"] == "unet" and c["shapes"][0][-2:] == [64, 64]]
    unet_per_sample = [c["tflop_per_call"] / c["shapes"][0][0] for c in full_size]
    assert unet_per_sample and all(v == pytest.approx(0.804, rel=0.01) for v in unet_per_sample)


def test_smoke_takes_the_smoke_settings_and_explicit_options_win():
    from sow.bench.settings import SMOKE, BenchSettings

    smoke = BenchSettings(smoke=True)
    assert {k: getattr(smoke, k) for k in SMOKE} == SMOKE
    assert BenchSettings(smoke=True, size=128).size == 128
    # 1 counted + 0 warm-up + 1 timed run, DDIM 1, the interleaved ladder: 3 rungs and the fast path at batch 1, 1 each
    assert smoke.runs() == 2 + 1 + (3 + 1)
    assert BenchSettings(batch=[1, 2], warmup=1, repeats=3, baseline_repeats=2).runs() == (1 + 1 + 3) * 2 + (1 + 2) + (3 + 2) * (1 + 2)


def test_progress_reaches_the_total_and_tables_keep_their_numbers(tmp_path, capsys):
    """A smoke run: progress after every pipeline run, nothing printed by the library, a typed report;
    redirected stdout keeps whole numbers (no '…')."""
    import io

    from pydantic import ValidationError

    from sow.bench.reports import RunTiming

    from rich.console import Console

    from sow.bench.benchmark import run_bench
    from sow.bench.render import renderables
    from sow.bench.settings import BenchSettings

    settings = BenchSettings(smoke=True, device="cpu", no_reference=True)
    calls = []
    report = run_bench(settings, progress=lambda done, total, label: calls.append((done, total, label)))
    assert [c[0] for c in calls] == list(range(1, settings.runs() + 1))
    assert {c[1] for c in calls} == {settings.runs()} and calls[-1][2] == "DDIM-2"
    assert capsys.readouterr().out == ""  # the library returns the report; the CLI prints
    assert report.baselines.reference is None and report.baselines.ddim.steps == 2
    with pytest.raises(ValidationError, match="bogus"):  # every field declared: a stray one is refused
        RunTiming(**report.runs[0].model_dump(), bogus=1)
    buffer = io.StringIO()
    from sow.cli.bench import TABLE_WIDTH

    console = Console(file=buffer, width=TABLE_WIDTH)
    for item in renderables(report):
        console.print(item)
    assert "…" not in buffer.getvalue() and f"{report.runs[0].seconds_per_image.median:.3f}" in buffer.getvalue()


def test_count_only_runs_no_model(monkeypatch):
    """The cost model's pass runs stand-ins: the UNet's, VAE's and text encoder's forwards never see real tensors."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.autoencoders.vae import Decoder, Encoder
    from transformers import CLIPTextModel

    from sow.bench.cost_model import cost_model
    from sow.bench.settings import BenchSettings

    import torch

    def refusing(forward):
        def guarded(self, *args, **kwargs):  # FLOPs are counted on the meta device: shapes only, allowed
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if any(t.device.type != "meta" for t in tensors):
                raise AssertionError(f"{type(self).__name__} computed during --count-only")
            return forward(self, *args, **kwargs)

        return guarded

    for cls in (UNet2DConditionModel, Encoder, Decoder, CLIPTextModel):
        monkeypatch.setattr(cls, "forward", refusing(cls.forward))
    report = cost_model(BenchSettings(size=128, cycles=2))
    # 128 px, S=10, N=2: 7 + 5 condition/canvas inversion steps, 2 cycles x 2 levels, 5 final (the test above)
    assert report.unet_evaluations == 7 + 5 + 2 * 2 + 5
    assert sum(c.calls for c in report.per_call if c.module == "unet") == report.unet_evaluations


def test_the_progress_total_knows_the_reference_ladder():
    from sow.bench.benchmark import REFERENCE_LADDER
    from sow.bench.settings import REFERENCE_RUNGS

    assert REFERENCE_RUNGS == len(REFERENCE_LADDER)
