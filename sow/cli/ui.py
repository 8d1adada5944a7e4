"""`sow ui`: serve the web app (sow.ui) on the tiny model or any model `--model` loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from sow.cli.canvas_options import HeightOpt, WidthOpt, with_canvas
from sow.errors import InputError
from sow.ui.limits import MAX_LOADED_MODELS, MAX_UPLOAD_BYTES, UiLimits

UI_INSTALL = 'pip install "sow[ui]"'
"""The one command that installs the web app's dependencies (gradio)."""


def ui_command(
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="A model the page offers (repeatable; the first is the default): 'tiny' (embedded, random weights, offline), a hub id, a diffusers folder or a .safetensors file. Visitors choose among these only.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface; see docs/ui.md for what that exposes).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    share: Annotated[bool, typer.Option("--share", help="Also open a public Gradio share link (needs the internet).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
    config_file: Annotated[Optional[Path], typer.Option("--config", help="JSON file of GenerationConfig fields for every run (e.g. the canvas); checked at start.")] = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    max_loaded: Annotated[int, typer.Option("--max-loaded", min=1, help="Models kept in memory at once; loading another evicts the one used longest ago.")] = MAX_LOADED_MODELS,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, max=1024, help="Largest photo a visitor may upload, in MiB.")] = MAX_UPLOAD_BYTES / 2**20,
) -> None:
    """Serve the web app: upload photos, plan, drag each person's boxes, generate (needs the extra sow[ui])."""
    from sow.io.json_files import load_config_file
    from sow.io.network import check_host, check_port_free, check_port_number
    from sow.schemas import PRESETS, GenerationConfig

    models = tuple(m.strip() for m in (model or ["tiny"]))
    if any(not m for m in models):
        raise InputError("--model is empty; name a model (e.g. tiny)")
    limits = UiLimits(models=models, max_loaded=max_loaded, max_upload_bytes=int(max_upload_mb * 2**20))
    check_port_number(port)
    check_host(host)
    overrides = with_canvas(load_config_file(config_file), width, height)  # the page's canvas fields start here
    for preset in PRESETS:  # the page offers every preset: a config any of them rejects would fail every such request
        try:
            GenerationConfig.from_preset(preset, **overrides)
        except InputError as exc:
            raise InputError(f"--config {config_file}: {exc}") from None
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError(f"the web app needs gradio: {UI_INSTALL}") from None
    try:
        import gradio_image_annotation  # noqa: F401 - the boxes dragged on the plan
    except ImportError:
        raise InputError(f"the web app needs gradio_image_annotation: {UI_INSTALL}") from None
    from sow.models.loading import check_model_spec

    for name in models[1:]:  # the first loads below; the others are checked now (found, fits memory) and loaded on demand
        check_model_spec(name, device, dtype)
    check_port_free(host, port)  # a port in use or not allowed: said now, not after the model loads
    from sow.ui.app import build_app, launch
    from sow.ui.limits import gradio_upload_roots
    from sow.ui.session import ModelCache

    limits = dataclasses.replace(limits, upload_roots=gradio_upload_roots())
    cache = ModelCache(device=device, dtype=dtype, limits=limits)
    cache.get(models[0])  # load before serving: a bad --model fails here, in one line
    exposed = " (every interface: anyone who reaches this port can use the page)" if host in ("0.0.0.0", "::") else ""
    typer.echo(f"sow ui: http://{host}:{port}{exposed} (models {', '.join(models)}; Ctrl-C stops)", err=True)
    demo = build_app(models[0], cache=cache, config_overrides=overrides, limits=limits)
    try:
        launch(demo, host=host, port=port, share=share, max_upload_bytes=limits.max_upload_bytes)
    except OSError as exc:  # the port was taken meanwhile, or Gradio could not bind: the environment's
        from sow.errors import EnvironmentProblem

        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EnvironmentProblem(f"cannot serve on {host}:{port}: {first}") from None
