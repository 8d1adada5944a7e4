"""The Gradio page: upload, plan, drag the boxes, edit the prompt, generate, download.

Layout (reads at 1280x800): the inputs on the left (photos with a preview, prompt, buttons,
settings with the canvas); the plan in the middle (the seeded canvas with one draggable box_v
and box_r per person, snapped to the latent grid on release, the same boxes as a table of
numbers, the intensified prompt); the images, the downloads, the plan as used and the attention
picture on the right. Every handler catches errors and shows the CLI's one-line message in the
page, never a traceback.

The draggable boxes are ``gradio_image_annotation``'s ``image_annotator`` (an optional
dependency of the ``ui`` extra): boxes over an image, moved and resized with the pointer, read
back as corner coordinates in image pixels. The page never lets it add, delete or relabel boxes:
every plan has exactly two boxes per person.
"""

from __future__ import annotations

import os
from typing import Any

from sow.ui.boxes import TABLE_HEADERS, annotation_boxes, box_label, display_image, plan_with_annotation, plan_with_rows, table_rows
from sow.ui.session import Choices, ModelCache, canvas_overrides, condition_paths, edited_plan
from sow.ui.session import generate as run_generation
from sow.ui.session import make_config, one_line, preview, seeded_picture, the_condition
from sow.ui.limits import MAX_IMAGES, UiLimits, checked_request  # noqa: F401 - MAX_IMAGES: the page's default

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no calls home
import gradio as gr  # noqa: E402
from gradio_image_annotation import image_annotator  # noqa: E402

CONCURRENCY_LIMIT = 1
"""Model work (plan, generate) runs one job at a time; other users wait in Gradio's queue.
One pipeline object serves the process and attaches its attention processors per run."""

CSS = "#sow-error, #sow-error * { color: #b91c1c !important; font-weight: 600; }"
"""The page's only style: the error line in red."""

MAX_PEOPLE = 4
"""People (conditions) whose boxes the page labels; the plan format allows more, the page's colours repeat."""


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
    """The page over ``cache`` (a process-wide :class:`ModelCache`); ``config_overrides`` as ``--config`` gives
    (its ``canvas`` fills the page's canvas fields).

    ``limits`` (default: the cache's) name the models offered and the upload caps: every request's
    fields are checked against them before any work (:mod:`sow.ui.limits`).
    """
    from sow.plugins import get_registry
    from sow.schemas import PRESETS

    limits = limits or (cache.limits if cache is not None else UiLimits(models=(model,)))
    cache = cache or ModelCache(limits=limits)
    overrides = dict(config_overrides or {})
    registry = get_registry()
    given_canvas = overrides.get("canvas") if isinstance(overrides.get("canvas"), dict) else {}

    def choices_of(files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention) -> tuple[list, Choices]:
        paths, fields = checked_request(limits, registry, files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention)
        return paths, Choices(**fields)

    def uploads(files) -> list:
        return limits.uploads(condition_paths(files))

    def grid_of(model_name) -> int:
        return cache.get(limits.model(model_name)).backbone.vae_scale_factor

    def editor_value(plan, paths, grid):
        return {"image": display_image(seeded_picture(plan, paths, grid), plan), "boxes": annotation_boxes(plan)}

    def plan_outputs(plan, paths, grid, notes=""):
        """plan_state, editor, table, intensified prompt, error, notes."""
        return (plan.model_dump(mode="json"), editor_value(plan, paths, grid), table_rows(plan), plan.prompt, "", notes)

    def make_plan(files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention, width, height):
        paths, choices = choices_of(files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention)
        pipe = cache.get(choices.model)
        config = make_config(choices, canvas_overrides(width, height, overrides), pipe)
        plan = pipe.plan(the_condition(paths), choices.prompt, config, choices.seed, planner=choices.planner)
        notes = "; ".join([*plan.notes, *(f"repaired: {r}" for r in plan.repairs)])
        return plan_outputs(plan, paths, pipe.backbone.vae_scale_factor, notes)

    def on_plan(*inputs):
        try:
            return make_plan(*inputs)
        except Exception as exc:  # noqa: BLE001 - shown as one line, as the CLI does
            return (*[gr.update()] * 4, _shown(one_line(exc), inputs[0]), "")

    def on_files(files, plan_json, *inputs):
        """Photos added or removed: the preview follows, and a plan already made is made again for them."""
        try:
            shown = preview(uploads(files) if files else None)
        except Exception as exc:  # noqa: BLE001
            return (gr.update(), *[gr.update()] * 4, _shown(one_line(exc), files), "")
        if not files:
            return ([], None, None, [], gr.update(), "", "")
        if not plan_json:
            return (shown, *[gr.update()] * 4, "", gr.update())
        try:
            return (shown, *make_plan(files, *inputs))
        except Exception as exc:  # noqa: BLE001
            return (shown, *[gr.update()] * 4, _shown(one_line(exc), files), "")

    def on_drag(files, plan_json, value, model_name):
        """A box released: snapped to the latent grid, the faces pasted where their box_v now is."""
        if not plan_json or not value:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            from sow.schemas import Plan

            plan = Plan.model_validate(plan_json)
            grid = grid_of(model_name)
            moved = plan_with_annotation(plan, value.get("boxes"), grid)
            if moved == plan and _same_boxes(value.get("boxes"), annotation_boxes(plan)):
                return gr.skip(), gr.skip(), gr.skip(), ""  # the page's own update coming back: nothing to do
            return moved.model_dump(mode="json"), editor_value(moved, uploads(files), grid), table_rows(moved), ""
        except Exception as exc:  # noqa: BLE001
            return gr.skip(), gr.skip(), gr.skip(), _shown(one_line(exc), files)

    def on_table(files, plan_json, rows, model_name):
        """Numbers typed into the table: the boxes move there (snapped like a drag)."""
        if not plan_json:
            return gr.skip(), gr.skip(), gr.skip(), ""
        try:
            from sow.schemas import Plan

            plan = Plan.model_validate(plan_json)
            grid = grid_of(model_name)
            moved = plan_with_rows(plan, _rows(rows), grid)
            return moved.model_dump(mode="json"), editor_value(moved, uploads(files), grid), table_rows(moved), ""
        except Exception as exc:  # noqa: BLE001
            return gr.skip(), gr.skip(), gr.skip(), _shown(one_line(exc), files)

    def on_generate(files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention, width, height,
                    plan_json, plan_prompt, progress=gr.Progress()):
        try:
            paths, choices = choices_of(files, model_name, prompt, planner_name, modulator_name, preset, seed, count, attention)
            plan = edited_plan(plan_json, plan_prompt)
            pipe = cache.get(choices.model)
            config = make_config(choices, canvas_overrides(width, height, overrides), pipe)

            def step(info: dict) -> None:
                progress(info["evaluations"] / max(1, info["total"]), desc=f"{info['phase']} ({info['evaluations']}/{info['total']} UNet calls)")

            progress(0, desc="starting")
            done = run_generation(pipe, the_condition(paths), choices, config, plan, progress=step)
            grid = pipe.backbone.vae_scale_factor
            return (done.images, done.plan_picture, done.attention_picture, [str(done.plan_file), str(done.record_file)],
                    done.summary, "", done.plan.model_dump(mode="json"), editor_value(done.plan, paths, grid),
                    table_rows(done.plan), done.plan.prompt)
        except Exception as exc:  # noqa: BLE001
            return (*[gr.update()] * 5, _shown(one_line(exc), files), *[gr.update()] * 4)

    with gr.Blocks(title="sow: Selective One-Way Diffusion", analytics_enabled=False) as demo:
        gr.Markdown(
            "**sow** — an image from face photos and a prompt, each face kept pixel-exact. "
            "Upload, write a prompt, **Plan**, drag the boxes (or type their numbers), **Generate**."
            + (" *The tiny model has random weights: its images are noise.*" if model == "tiny" else "")
        )
        plan_state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                files = gr.File(label="Condition photo(s): one per person", file_count="multiple", file_types=["image"],
                                type="filepath", height=110, elem_id="sow-upload")
                faces = gr.Gallery(label="Uploaded faces", columns=4, height=110, object_fit="contain", allow_preview=False,
                                   elem_id="sow-faces")
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
                        modulator_box = gr.Dropdown(registry.names("modulator"), value=modulator,
                                                    label="Modulator", min_width=100, elem_id="sow-modulator")
                        preset_box = gr.Dropdown(list(PRESETS), value="normal", label="Preset", min_width=100, elem_id="sow-preset")
                    with gr.Row():
                        width_box = gr.Number(given_canvas.get("width"), label="Canvas width (px)", precision=0, minimum=64,
                                              maximum=4096, step=8, min_width=100, elem_id="sow-width",
                                              info="empty: the model's native size")
                        height_box = gr.Number(given_canvas.get("height"), label="Canvas height (px)", precision=0, minimum=64,
                                               maximum=4096, step=8, min_width=100, elem_id="sow-height")
                    with gr.Row():
                        seed_box = gr.Number(0, label="Seed", precision=0, minimum=0, min_width=100, elem_id="sow-seed")
                        count_box = gr.Number(1, label=f"Images (1-{limits.max_images})", precision=0, minimum=1,
                                              maximum=limits.max_images, min_width=100, elem_id="sow-count")
                    attention_box = gr.Checkbox(False, label="Attention picture (DAM)", elem_id="sow-attention")
            with gr.Column(scale=5, min_width=320):
                gr.Markdown("**Plan**: drag or resize the boxes (box_v: where the face goes; box_r: its body); "
                            "they snap to the 8-px latent grid when released.", elem_id="sow-plan-title")
                labels = [box_label(i, kind) for i in range(MAX_PEOPLE) for kind in ("box_v", "box_r")]
                editor = image_annotator(
                    None, label="Plan", show_label=False, label_list=labels, disable_edit_boxes=True, sources=[],
                    image_type="filepath", show_clear_button=False, show_remove_button=False, show_download_button=False,
                    enable_keyboard_shortcuts=False, box_min_size=8, handle_size=6, boxes_alpha=0.12, height=420,
                    elem_id="sow-plan-editor",
                )
                table = gr.Dataframe(None, headers=TABLE_HEADERS, datatype=["number", "str", "number", "number", "number", "number"],
                                     column_count=len(TABLE_HEADERS), type="array", interactive=True, label="Boxes (canvas pixels)",
                                     static_columns=[0, 1], max_height=220, elem_id="sow-box-table")
                plan_prompt = gr.Textbox(label="Intensified prompt (editable)", lines=2, elem_id="sow-plan-prompt")
                plan_notes = gr.Markdown("", elem_id="sow-plan-notes")
            with gr.Column(scale=5, min_width=320):
                gallery = gr.Gallery(label="Images", columns=2, height=280, object_fit="contain", elem_id="sow-gallery")
                summary = gr.Markdown("", elem_id="sow-summary")
                downloads = gr.File(label="Plan JSON and run record", file_count="multiple", interactive=False,
                                    height=120, elem_id="sow-downloads")
                gr.Markdown("**Plan as used** (every box as the image used it; the full-size picture opens from its corner):")
                used_plan = gr.Image(label="Plan as used", show_label=False, type="pil", interactive=False, height=420,
                                     elem_id="sow-used-plan")
                attention_image = gr.Image(label="Attention (DAM)", type="pil", interactive=False, height=300,
                                           elem_id="sow-attention-image")

        controls = [files, model_box, prompt, planner_box, modulator_box, preset_box, seed_box, count_box, attention_box,
                    width_box, height_box]
        planned = [plan_state, editor, table, plan_prompt, error, plan_notes]
        plan_button.click(on_plan, controls, planned, concurrency_id="model", concurrency_limit=CONCURRENCY_LIMIT,
                          show_progress_on=[editor])
        files.change(on_files, [files, plan_state, *controls[1:]], [faces, *planned], concurrency_id="model",
                     concurrency_limit=CONCURRENCY_LIMIT, show_progress="hidden")
        for canvas_box in (width_box, height_box):  # a new canvas: a plan already made is made again for it
            canvas_box.submit(on_files, [files, plan_state, *controls[1:]], [faces, *planned], concurrency_id="model",
                              concurrency_limit=CONCURRENCY_LIMIT, show_progress="hidden")
        editor.change(on_drag, [files, plan_state, editor, model_box], [plan_state, editor, table, error], show_progress="hidden")
        table.input(on_table, [files, plan_state, table, model_box], [plan_state, editor, table, error], show_progress="hidden")
        generate_button.click(
            on_generate, [*controls, plan_state, plan_prompt],
            [gallery, used_plan, attention_image, downloads, summary, error, plan_state, editor, table, plan_prompt],
            concurrency_id="model", concurrency_limit=CONCURRENCY_LIMIT, show_progress_on=[gallery],
        )
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT)
    return demo


def _same_boxes(given: list[dict] | None, expected: list[dict]) -> bool:
    """Whether the component holds exactly ``expected``'s boxes (labels and corners)."""
    def key(items):
        return sorted((b.get("label"), *(int(round(float(b[k]))) for k in ("xmin", "ymin", "xmax", "ymax"))) for b in items or [])

    try:
        return key(given) == key(expected)
    except (KeyError, TypeError, ValueError):
        return False


def _rows(rows: Any) -> list[list[Any]]:
    """The table's value as a list of rows (gradio hands over a list, a dict with ``data`` or a DataFrame)."""
    if rows is None:
        return []
    if isinstance(rows, dict):
        return list(rows.get("data") or [])
    if hasattr(rows, "values") and hasattr(rows, "columns"):
        return rows.values.tolist()
    return [list(r) for r in rows]


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           max_upload_bytes: int | None = None, **kwargs: Any) -> Any:
    """Serve ``demo`` (blocks until stopped unless ``prevent_thread_lock=True``).

    ``max_upload_bytes`` (default :data:`sow.ui.limits.MAX_UPLOAD_BYTES`): Gradio refuses a larger
    upload (HTTP 413) before storing it.
    """
    from sow.ui.limits import MAX_UPLOAD_BYTES

    return demo.launch(server_name=host, server_port=port, share=share, inbrowser=False, show_error=False,
                       quiet=True, css=CSS, max_file_size=max_upload_bytes or MAX_UPLOAD_BYTES, **kwargs)
