"""The Gradio page: upload, plan, edit the boxes and the prompt, generate, download.

Layout (reads at 1280x800): the inputs on the left; the plan (its picture over the seeded canvas,
the boxes as number fields that redraw it, the intensified prompt) in the middle; the images,
the downloads and the attention picture on the right. Every handler catches errors and shows
the CLI's one-line message in the page, never a traceback.
"""

from __future__ import annotations

import os
from typing import Any

from sow.ui.session import BOX_FIELDS, Choices, ModelCache, box_values, condition_paths, edited_plan
from sow.ui.session import generate as run_generation
from sow.ui.session import make_config, one_line, picture, the_condition
from sow.ui.limits import MAX_IMAGES, UiLimits, checked_request  # noqa: F401 - MAX_IMAGES: the page's default

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no calls home
import gradio as gr  # noqa: E402

CONCURRENCY_LIMIT = 1
"""Model work (plan, generate) runs one job at a time; other users wait in Gradio's queue.
One pipeline object serves the process and attaches its attention processors per run."""

CSS = "#sow-error, #sow-error * { color: #b91c1c !important; font-weight: 600; }"
"""The page's only style: the error line in red."""


def _shown(message: str, files) -> str:
    """The error line with Gradio's upload cache folders cut from the file names the user uploaded."""
    try:
        paths = condition_paths(files)
    except Exception:  # noqa: BLE001 - nothing uploaded: nothing to shorten
        return message
    for path in paths:
        message = message.replace(str(path), path.name)
    return message


def build_app(
    model: str = "tiny",
    *,
    cache: ModelCache | None = None,
    config_overrides: dict[str, Any] | None = None,
    planner: str = "heuristic",
    modulator: str = "dam",
    limits: UiLimits | None = None,
) -> gr.Blocks:
    """The page over ``cache`` (a process-wide :class:`ModelCache`); ``config_overrides`` as ``--config`` gives.

    ``limits`` (default: the cache's) name the models offered and the upload caps: every request's
    fields are checked against them before any work (:mod:`sow.ui.limits`).
    """
    from sow.plugins import get_registry
    from sow.schemas import PRESETS

    limits = limits or (cache.limits if cache is not None else UiLimits(models=(model,)))
    cache = cache or ModelCache(limits=limits)
    overrides = dict(config_overrides or {})
    registry = get_registry()

    def choices_of(files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention) -> tuple[list, Choices]:
        paths, fields = checked_request(limits, registry, files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention)
        return paths, Choices(**fields)

    def on_plan(files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention):
        try:
            paths, choices = choices_of(files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention)
            pipe = cache.get(choices.model)
            config = make_config(choices, overrides, pipe)
            plan = pipe.plan(the_condition(paths), choices.prompt, config, choices.seed, planner=choices.planner)
            drawn = picture(plan, paths, pipe.backbone.vae_scale_factor)
            notes = "; ".join([*plan.notes, *(f"repaired: {r}" for r in plan.repairs)])
            return (plan.model_dump(mode="json"), drawn, *box_values(plan.box_v), *box_values(plan.box_r),
                    plan.prompt, "", notes)
        except Exception as exc:  # noqa: BLE001 - shown as one line, as the CLI does
            return (*[gr.update()] * 11, _shown(one_line(exc), files), "")

    def on_redraw(files, plan_json, *fields):
        try:
            plan = edited_plan(plan_json, list(fields[0:4]), list(fields[4:8]), fields[8])
            if plan is None:
                return gr.update(), ""
            return picture(plan, limits.uploads(condition_paths(files))), ""
        except Exception as exc:  # noqa: BLE001
            return gr.update(), _shown(one_line(exc), files)

    def on_generate(files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention,
                    plan_json, *fields, progress=gr.Progress()):
        try:
            paths, choices = choices_of(files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention)
            pipe = cache.get(choices.model)
            config = make_config(choices, overrides, pipe)
            plan = edited_plan(plan_json, list(fields[0:4]), list(fields[4:8]), fields[8])

            def step(info: dict) -> None:
                progress(info["evaluations"] / max(1, info["total"]), desc=f"{info['phase']} ({info['evaluations']}/{info['total']} UNet calls)")

            progress(0, desc="starting")
            done = run_generation(pipe, the_condition(paths), choices, config, plan, progress=step)
            drawn = picture(done.plan, paths, pipe.backbone.vae_scale_factor)
            return (done.images, done.plan_picture, done.attention_picture, [str(done.plan_file), str(done.record_file)],
                    done.summary, "", done.plan.model_dump(mode="json"), drawn,
                    *box_values(done.plan.box_v), *box_values(done.plan.box_r), done.plan.prompt)
        except Exception as exc:  # noqa: BLE001
            return (*[gr.update()] * 5, _shown(one_line(exc), files), *[gr.update()] * 11)

    with gr.Blocks(title="sow: Selective One-Way Diffusion", analytics_enabled=False) as demo:
        gr.Markdown(
            "**sow** — an image from a face photo and a prompt, the face kept pixel-exact. "
            "Upload, write a prompt, **Plan** (then move the boxes or edit the prompt), **Generate**."
            + (" *The tiny model has random weights: its images are noise.*" if model == "tiny" else "")
        )
        plan_state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                files = gr.File(label="Condition photo(s)", file_count="multiple", file_types=["image"],
                                type="filepath", height=110, elem_id="sow-upload")
                prompt = gr.Textbox(label="Prompt", placeholder="a chef in a busy kitchen", lines=2, elem_id="sow-prompt")
                with gr.Row():
                    plan_button = gr.Button("Plan", min_width=80, elem_id="sow-plan-button")
                    generate_button = gr.Button("Generate", variant="primary", min_width=80, elem_id="sow-generate-button")
                error = gr.Markdown("", elem_id="sow-error")
                with gr.Accordion("Settings", open=True):
                    with gr.Row():
                        model_box = gr.Dropdown(list(limits.models), value=model if model in limits.models else limits.models[0],
                                                label="Model", allow_custom_value=False, min_width=100, elem_id="sow-model")
                        planner_box = gr.Dropdown(registry.names("planner"), value=planner, label="Planner",
                                                  min_width=100, elem_id="sow-planner")
                    with gr.Row():
                        modulator_box = gr.Dropdown(registry.names("attention_modulator"), value=modulator,
                                                    label="Modulator", min_width=100, elem_id="sow-modulator")
                        preset_box = gr.Dropdown(list(PRESETS), value="normal", label="Preset", min_width=100, elem_id="sow-preset")
                    with gr.Row():
                        seed_box = gr.Number(0, label="Seed", precision=0, minimum=0, min_width=100, elem_id="sow-seed")
                        count_box = gr.Number(1, label=f"Images (1-{limits.max_images})", precision=0, minimum=1,
                                              maximum=limits.max_images, min_width=100, elem_id="sow-count")
                    attention_box = gr.Checkbox(False, label="Attention picture (DAM)", elem_id="sow-attention")
            with gr.Column(scale=5, min_width=320):
                plan_image = gr.Image(label="Plan: box_v green, box_r orange", type="pil", interactive=False,
                                      height=280, elem_id="sow-plan-image")
                with gr.Row():
                    box_v = [gr.Number(None, label=f"box_v {f}", precision=0, minimum=0, min_width=60, elem_id=f"sow-box-v-{f}")
                             for f in BOX_FIELDS]
                with gr.Row():
                    box_r = [gr.Number(None, label=f"box_r {f}", precision=0, minimum=0, min_width=60, elem_id=f"sow-box-r-{f}")
                             for f in BOX_FIELDS]
                plan_prompt = gr.Textbox(label="Intensified prompt (editable)", lines=2, elem_id="sow-plan-prompt")
                plan_notes = gr.Markdown("", elem_id="sow-plan-notes")
            with gr.Column(scale=5, min_width=320):
                gallery = gr.Gallery(label="Images", columns=2, height=280, object_fit="contain", elem_id="sow-gallery")
                summary = gr.Markdown("", elem_id="sow-summary")
                downloads = gr.File(label="Plan JSON and run record", file_count="multiple", interactive=False,
                                    height=120, elem_id="sow-downloads")
                with gr.Row():
                    used_plan = gr.Image(label="Plan as used", type="pil", interactive=False, height=150,
                                         elem_id="sow-used-plan")
                    attention_image = gr.Image(label="Attention", type="pil", interactive=False, height=150,
                                               elem_id="sow-attention-image")

        controls = [files, model_box, prompt, planner_box, modulator_box, preset_box, seed_box, count_box, attention_box]
        fields = [*box_v, *box_r, plan_prompt]
        plan_button.click(
            on_plan, controls, [plan_state, plan_image, *box_v, *box_r, plan_prompt, error, plan_notes],
            concurrency_id="model", concurrency_limit=CONCURRENCY_LIMIT, show_progress_on=[plan_image],
        )
        for field in fields:
            field.input(on_redraw, [files, plan_state, *fields], [plan_image, error], show_progress="hidden")
        generate_button.click(
            on_generate, [*controls, plan_state, *fields],
            [gallery, used_plan, attention_image, downloads, summary, error, plan_state, plan_image, *box_v, *box_r,
             plan_prompt],
            concurrency_id="model", concurrency_limit=CONCURRENCY_LIMIT, show_progress_on=[gallery],
        )
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           max_upload_bytes: int | None = None, **kwargs: Any) -> Any:
    """Serve ``demo`` (blocks until stopped unless ``prevent_thread_lock=True``).

    ``max_upload_bytes`` (default :data:`sow.ui.limits.MAX_UPLOAD_BYTES`): Gradio refuses a larger
    upload (HTTP 413) before storing it.
    """
    from sow.ui.limits import MAX_UPLOAD_BYTES

    return demo.launch(server_name=host, server_port=port, share=share, inbrowser=False, show_error=False,
                       quiet=True, css=CSS, max_file_size=max_upload_bytes or MAX_UPLOAD_BYTES, **kwargs)
