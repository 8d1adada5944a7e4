"""`sow ui`: serve the web app (sow.ui) on the tiny model or any model `--model` loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sow.cli.canvas_options import HeightOpt, WidthOpt, with_canvas
from sow.errors import InputError

UI_INSTALL = 'pip install "sow[ui]"'
"""The one command that installs the web app's dependencies (gradio)."""


def ui_command(
    model: Annotated[str, typer.Option("--model", "-m", help="'tiny' (embedded, random weights, offline), a hub id, a diffusers folder or a .safetensors file.")] = "tiny",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    share: Annotated[bool, typer.Option("--share", help="Also open a public Gradio share link (needs the internet).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
    config_file: Annotated[Optional[Path], typer.Option("--config", help="JSON file of GenerationConfig fields for every run (e.g. the canvas).")] = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
) -> None:
    """Serve the web app: upload photos, plan, drag each person's boxes, generate (needs the extra sow[ui])."""
    from sow.io.json_files import load_config_file

    if not 0 < port < 65536:
        raise InputError(f"--port {port}: must lie in 1 .. 65535")
    overrides = with_canvas(load_config_file(config_file), width, height)  # the page's canvas fields start here
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError(f"the web app needs gradio: {UI_INSTALL}") from None
    from sow.ui.app import build_app, launch
    from sow.ui.session import ModelCache

    cache = ModelCache(device=device, dtype=dtype)
    cache.get(model)  # load before serving: a bad --model fails here, in one line
    typer.echo(f"sow ui: http://{host}:{port} (model {model}; Ctrl-C stops)", err=True)
    launch(build_app(model, cache=cache, config_overrides=overrides), host=host, port=port, share=share)
