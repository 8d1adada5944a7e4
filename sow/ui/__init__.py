"""The web app (`sow ui`, the optional extra ``sow[ui]``): a Gradio page over the Python API.

`session` holds what the page does (model cache, plan, redraw, generate) without importing
gradio; `app` lays out the page and wires its events. Only the CLI's `ui` command and
callers who ask for it import `app` (and so gradio). This package imports the library's
public API and nothing from `sow.cli`.
"""
