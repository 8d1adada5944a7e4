"""The shared half of every local multimodal-LLM planner: stages, retry, loading, model cache.

A family plugin (``sow-llava``, ``sow-qwen-vl``, or yours) subclasses :class:`MLLMPlanner`
and writes two methods:

``load(self) -> object``
    Load the model and its processor for ``self.options`` and return them in any object.
    Use :func:`load_kwargs` for the ``from_pretrained`` arguments (device, dtype,
    ``device_map``, bitsandbytes quantization) and :func:`describe_load_error` for a
    one-line :class:`~sow.errors.ModelLoadError`.
``chat(self, loaded, messages, image) -> str``
    Render ``messages`` (Hugging Face chat format, from :mod:`sow.planners.mllm.prompts`) with the
    model's chat template, attach ``image`` where the message has ``{"type": "image"}``,
    append ``self.prefill`` to the rendered prompt, generate with ``self.generate_kwargs(...)``
    (greedy, the token budget, stop after the first JSON object) and return
    ``self.prefill`` + the new text.

The base class runs the paper's three stages (:mod:`sow.planners.mllm.prompts`), reads each answer
with :func:`sow.planners.mllm.answers.parse_answer`, retries a stage once with the error fed back,
assembles the plan through :func:`sow.planners.repair.repair_plan` (conversions and repairs
recorded in ``plan.repairs``) and raises :class:`~sow.errors.PlannerError` when a stage
still fails, so the ``--on-planner-error`` policy decides what happens next. Loaded
models are kept per process (:func:`cached_model`): a batch run loads once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from sow.errors import InputError, ModelLoadError, PlannerError
from sow.planners.mllm.answers import AnswerError, ParsedAnswer, json_object_closed, parse_answer, retry_message
from sow.planners.mllm.prompts import STAGES, stage_messages, with_retry
from sow.schemas import Plan, first_error
from sow.stages import PlanRequest

Quantize = Literal["4bit", "8bit"]

DEFAULT_MAX_NEW_TOKENS = 200
"""Token budget of one answer: the longest (stage 1, two sentences of JSON) needs ~120."""

LOAD_OPTIONS = ("device", "dtype", "device_map", "quantize", "local_files_only")
"""The options that change the loaded model (the others only change how it is asked)."""

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


class MLLMOptions(BaseModel):
    """Settings of a local multimodal planner (``--planner-option KEY=VALUE`` on the CLI)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Hub id or local folder of the model (default: the family's).")
    device: str = Field("auto", description="cpu, cuda, cuda:N, mps or auto (cuda when available).")
    dtype: str = Field("auto", description="fp32, fp16, bf16 or auto (bf16 on cuda, fp32 on cpu).")
    device_map: str | None = Field(None, description="accelerate device map, e.g. 'auto' to spread a large model over GPUs and CPU.")
    quantize: Quantize | None = Field(None, description="4bit (nf4, bf16 compute) or 8bit with bitsandbytes.")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=8, le=4096, description="Token budget of one answer.")
    retries: int = Field(1, ge=0, le=3, description="Retries of a stage whose answer cannot be read (error fed back).")
    prefill_json: bool = Field(True, description="Start the model's answer with '{' so it answers in JSON from the first token.")
    local_files_only: bool = Field(False, description="Never contact the Hugging Face hub.")


# -- loading ---------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; an unavailable CUDA is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available here; use --planner-option device=cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r}: choose fp32, fp16, bf16 or auto")
    return getattr(torch, DTYPES[dtype])


def quantization_config(quantize: Quantize | None) -> Any:
    """A ``BitsAndBytesConfig`` (4bit: nf4 with bf16 compute; 8bit) or None; a clear error without bitsandbytes."""
    if quantize is None:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            f"quantize={quantize} needs bitsandbytes, which is not installed: "
            "pip install bitsandbytes (or the plugin's [quantize] extra)"
        ) from None
    import torch
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise InputError(f"quantize {quantize!r}: choose 4bit or 8bit")


def load_kwargs(options: MLLMOptions) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``options``: dtype, device map, quantization, safe loading.

    Quantized models and ``device_map`` need accelerate; a quantized model on the CPU is
    mapped whole to the CPU (bitsandbytes >= 0.45 runs 4/8-bit there, slowly). With
    ``device="auto"`` on a CUDA machine with accelerate, ``device_map="auto"`` places the
    model (over several GPUs, or partly on the CPU when it does not fit).
    """
    from sow.io.security import safe_load_kwargs

    device = resolve_device(options.device)
    # safetensors only and no remote code, unless the user allowed them (--allow-pickle, --trust-remote-code)
    kwargs: dict[str, Any] = {"local_files_only": local_only(options), **safe_load_kwargs()}
    qconfig = quantization_config(options.quantize)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["dtype"] = __import__("torch").bfloat16 if options.dtype == "auto" else resolve_dtype(options.dtype, device)
        kwargs["device_map"] = options.device_map or {"": device}
    else:
        kwargs["dtype"] = resolve_dtype(options.dtype, device)
        if options.device_map:
            kwargs["device_map"] = options.device_map
        elif options.device == "auto" and device == "cuda" and _has_accelerate():
            kwargs["device_map"] = "auto"  # fill the GPU(s), spill to the CPU rather than fail
    if "device_map" in kwargs:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise ModelLoadError("device_map and quantize need accelerate: pip install accelerate") from None
    return kwargs


def _has_accelerate() -> bool:
    from importlib.util import find_spec

    return find_spec("accelerate") is not None


def local_only(options: MLLMOptions) -> bool:
    """Whether to keep off the hub: asked for (``local_files_only``), or the hub is unreachable now."""
    from sow.io.hub import offline_reason

    return options.local_files_only or offline_reason() is not None


def describe_load_error(family: str, model: str, options: MLLMOptions, exc: BaseException) -> ModelLoadError:
    """One line saying which model failed to load, how, and what to try."""
    from sow.io.hub import offline_reason

    text = " ".join(str(exc).split()) or type(exc).__name__
    offline = offline_reason()
    if isinstance(exc, OSError) and not isinstance(exc, (ImportError, MemoryError)) and offline and not options.local_files_only:
        return ModelLoadError(
            f"could not load {family} model {model!r}: offline ({offline}) and it is not a local folder "
            f"or in the Hugging Face cache; download it on a connected machine (`hf download {model}`) "
            "or pass --planner-option model=PATH"
        )
    if isinstance(exc, OSError) and not isinstance(exc, (ImportError, MemoryError)):
        return ModelLoadError(
            f"could not load {family} model {model!r}: not a model folder and not downloadable "
            f"(offline, or a wrong id?): {text[:300]}"
        )
    if options.quantize:
        return ModelLoadError(
            f"could not load {family} model {model!r} with quantize={options.quantize} on "
            f"{options.device}: {text[:300]}; the installed bitsandbytes may not support this "
            "hardware - try without quantize"
        )
    return ModelLoadError(f"could not load {family} model {model!r}: {type(exc).__name__}: {text[:300]}")


def stop_after_json(tokenizer: Any, prompt_length: int, prefix: str = "") -> Any:
    """A transformers stopping criterion: stop once the answer's first JSON object has closed.

    Saves the tokens a model spends on prose after the JSON; the parser needs nothing more.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopAfterJSON(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            done = [json_object_closed(prefix + tokenizer.decode(row[prompt_length:], skip_special_tokens=True)) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopAfterJSON()])


_MODELS: dict[tuple, Any] = {}


def cached_model(key: tuple, loader: Callable[[], Any]) -> Any:
    """``loader()``'s result, loaded once per process for ``key`` (the model and its load options)."""
    if key not in _MODELS:
        _MODELS[key] = loader()
    return _MODELS[key]


def clear_model_cache() -> None:
    """Forget every loaded model (frees their memory once nothing else holds them)."""
    _MODELS.clear()


# -- the planner -----------------------------------------------------------------------------


class MLLMPlanner:
    """A planner asking a local multimodal LLM the paper's three questions. Subclass per family."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    family: ClassVar[str] = ""
    """Human name of the model family, for messages (``"LLaVA"``)."""
    default_model: ClassVar[str] = ""
    system_role: ClassVar[bool] = True
    """Whether the family's chat template has a system role (else instructions go in the user turn)."""
    options_class: ClassVar[type[MLLMOptions]] = MLLMOptions
    """The options model; a family with extra settings subclasses :class:`MLLMOptions`."""

    def __init__(self, **options: Any) -> None:
        try:
            self.options = self.options_class(**options)
        except ValueError as exc:
            raise InputError(f"planner {self.name!r} option {first_error(exc)}") from None
        self.model_id = self.options.model or self.default_model

    # -- what a family implements --------------------------------------------------------

    def load(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def chat(self, loaded: Any, messages: list[dict[str, Any]], image: Image.Image) -> str:  # pragma: no cover
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------

    def preflight(self) -> None:
        """Refuse, before any model loads, a model option that names a local path holding no
        model (a folder without ``config.json``, or a path that does not exist); hub ids pass."""
        from pathlib import Path

        from sow.errors import PlannerSetupError

        model = self.model_id
        path = Path(model).expanduser()
        named_as_path = model.startswith(("/", "./", "../", "~")) or path.exists()
        if not named_as_path:
            return  # a hub id ("org/name"): loading it tells
        if not path.is_dir():
            raise PlannerSetupError(f"{self.family} model {model!r}: no such folder (a local model is a folder with config.json)")
        if not (path / "config.json").is_file():
            raise PlannerSetupError(f"{self.family} model {model!r}: the folder holds no config.json, so it is not a model folder")

    def load_config(self, model_types: tuple[str, ...], other_hint: str) -> Any:
        """The model's transformers config, refused in one line unless its type is one of ``model_types``."""
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(self.model_id, local_files_only=local_only(self.options))
        except Exception as exc:
            raise describe_load_error(self.family, self.model_id, self.options, exc) from None
        if config.model_type not in model_types:
            raise ModelLoadError(
                f"{self.model_id!r} is a {config.model_type!r} model, not {self.family} ({', '.join(model_types)}); "
                f"{other_hint}"
            )
        return config

    def load_model(self) -> Any:
        """The image-text-to-text model, loaded with :func:`load_kwargs`, placed on the device, in eval mode."""
        from transformers import AutoModelForImageTextToText

        kwargs = load_kwargs(self.options)
        try:
            model = AutoModelForImageTextToText.from_pretrained(self.model_id, **kwargs)
        except Exception as exc:
            raise describe_load_error(self.family, self.model_id, self.options, exc) from None
        if "device_map" not in kwargs:
            model.to(resolve_device(self.options.device))
        return model.eval()

    @property
    def prefill(self) -> str:
        """Text put at the start of the model's turn (and of its answer): ``"{"`` or nothing."""
        return "{" if self.options.prefill_json else ""

    def generate_kwargs(self, tokenizer: Any, prompt_length: int) -> dict[str, Any]:
        """``model.generate`` arguments: greedy, the token budget, stop after the first JSON object."""
        return {
            "max_new_tokens": self.options.max_new_tokens,
            "do_sample": False,
            "stopping_criteria": stop_after_json(tokenizer, prompt_length, self.prefill),
        }

    def cache_key(self) -> tuple:
        """What makes a loaded model reusable: the family, the model and the options used to load it."""
        loading = tuple((name, str(getattr(self.options, name))) for name in LOAD_OPTIONS)
        return (type(self).__qualname__, self.model_id, loading)

    def loaded(self) -> Any:
        """The model and processor of :meth:`load`, loaded once per process (:func:`cached_model`)."""
        return cached_model(self.cache_key(), self.load)

    def ask(
        self, loaded: Any, stage: str, image: Image.Image, timings: dict[str, float] | None = None, **values: Any
    ) -> ParsedAnswer:
        """One stage: the question, the answer parsed; on failure ``retries`` more tries with the error fed back.

        ``timings`` (the caller's, per run) receives the seconds of each try as ``"<stage>#<try>"``.
        """
        _, model = STAGES[stage]
        messages = stage_messages(stage, system_role=self.system_role, **values)
        for attempt in range(self.options.retries + 1):
            start = time.perf_counter()
            answer = self.chat(loaded, messages, image)
            if timings is not None:
                timings[f"{stage}#{attempt}"] = time.perf_counter() - start
            try:
                parsed = parse_answer(answer, model, values["canvas"])
            except AnswerError as exc:
                error = exc
                messages = with_retry(messages, answer, retry_message(exc, model))
                continue
            if attempt:
                parsed.repairs.insert(0, f"{stage} answer read on retry {attempt} (the answer before was rejected: {last_error(messages)})")
            return parsed
        tries = self.options.retries + 1
        raise PlannerError(f"{self.family} {stage} answer unusable after {tries} tries: {error}")

    def plan(self, request: PlanRequest) -> Plan:
        return self.plan_timed(request)[0]

    def plan_timed(self, request: PlanRequest) -> tuple[Plan, dict[str, float]]:
        """:meth:`plan`, and the seconds it spent: ``"load"`` (about 0 when the model was cached) and
        each stage's tries (``"intensify#0"``, ...; ``"position_several#0"``, ... with several
        conditions). The timings belong to this call, not to the planner."""
        from sow.planners.repair import repair_plan

        if len(request.conditions) > 1:
            return self._plan_several(request)

        config, image = request.config, request.condition
        canvas = config.canvas
        min_side, max_side = config.side_limits()
        timings: dict[str, float] = {}
        start = time.perf_counter()
        loaded = self.loaded()
        timings["load"] = time.perf_counter() - start
        common = {"canvas": canvas, "width": canvas.width, "height": canvas.height, "timings": timings}

        first = self.ask(loaded, "intensify", image, prompt=request.prompt, **common)
        intensified: Any = first.value
        second = self.ask(
            loaded, "position", image, prompt=intensified.prompt, image_width=image.width,
            image_height=image.height, min_side=min_side, max_side=max_side, **common,
        )
        box_v = second.value.box_v  # type: ignore[attr-defined]
        shown = "[" + ", ".join(str(round(v)) for v in box_v) + "]"
        third = self.ask(loaded, "refine", image, prompt=intensified.prompt, box_v=shown, **common)
        answer = {
            "canvas": canvas,
            "box_v": list(box_v),
            "box_r": list(third.value.box_r),  # type: ignore[attr-defined]
            "prompt": intensified.prompt,
            "user_prompt": request.prompt,
            "description": intensified.description,
            "planner": self.name,
            "repairs": [*first.repairs, *second.repairs, *third.repairs],
            "notes": [f"{self.family} model {self.model_id}"],
        }
        return repair_plan(answer, config), timings


    def _plan_several(self, request: PlanRequest) -> tuple[Plan, dict[str, float]]:
        """Several conditions: the three stages on a strip of the photos (numbered), each box stage one answer.

        A box that cannot be read, or a missing one, falls back alone to the side-by-side slot of its
        condition (:func:`sow.planners.layout.side_by_side`); each fallback is a line in ``plan.repairs``.
        Boxes that overlap are then repaired by :func:`sow.planners.repair.repair_plan`.
        """
        from sow.planners.fixed import body_box
        from sow.planners.layout import condition_strip, side_by_side, side_limits
        from sow.planners.mllm.answers import AnswerError, read_box
        from sow.planners.repair import repair_plan

        config, images = request.config, request.conditions
        canvas, n = config.canvas, len(images)
        min_side, max_side = side_limits(config, n)
        strip = condition_strip(images)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        loaded = self.loaded()
        timings["load"] = time.perf_counter() - start
        common = {"canvas": canvas, "width": canvas.width, "height": canvas.height, "count": n, "timings": timings}
        first = self.ask(loaded, "intensify_several", strip, prompt=request.prompt, **common)
        intensified: Any = first.value
        sizes = ", ".join(f"{i + 1}: {im.width}x{im.height}" for i, im in enumerate(images))
        second = self.ask(loaded, "position_several", strip, prompt=intensified.prompt, sizes=sizes,
                          min_side=min_side, max_side=max_side, **common)
        repairs = [*first.repairs, *second.repairs]
        slots = side_by_side([im.size for im in images], canvas, config, 0.06)
        boxes_v = self._each_box(second.value.boxes, "box_v", slots, canvas, repairs, read_box, AnswerError)  # type: ignore[attr-defined]
        shown = "; ".join(f"{i + 1}: [" + ", ".join(str(round(v)) for v in b) + "]" for i, b in enumerate(boxes_v))
        third = self.ask(loaded, "refine_several", strip, prompt=intensified.prompt, boxes_v=shown, **common)
        repairs += third.repairs
        bodies = [body_box(b, canvas).as_list() for b in slots]
        boxes_r = self._each_box(third.value.boxes, "box_r", bodies, canvas, repairs, read_box, AnswerError)  # type: ignore[attr-defined]
        answer = {
            "canvas": canvas,
            "conditions": [{"image": i, "box_v": list(v), "box_r": list(r)} for i, (v, r) in enumerate(zip(boxes_v, boxes_r))],
            "prompt": intensified.prompt,
            "user_prompt": request.prompt,
            "description": intensified.description,
            "planner": self.name,
            "repairs": repairs,
            "notes": [f"{self.family} model {self.model_id}", f"{n} conditions, asked on a strip of the photos"],
        }
        return repair_plan(answer, config, n), timings

    @staticmethod
    def _each_box(raw: list, name: str, fallback: list, canvas, repairs: list[str], read_box, error) -> list[tuple[float, ...]]:
        """One box per condition from an answer's list; an unreadable or missing one takes its fallback (recorded)."""
        out = []
        for i, default in enumerate(fallback):
            default = tuple(default.as_list() if hasattr(default, "as_list") else default)
            if i >= len(raw):
                repairs.append(f"condition {i + 1}: the answer gave no {name}; the side-by-side layout's {list(default)} is used")
                out.append(default)
                continue
            try:
                out.append(read_box(raw[i], f"{name} of condition {i + 1}", canvas, repairs))
            except (error, ValueError, TypeError) as exc:
                repairs.append(f"condition {i + 1}: {name} {raw[i]!r} unreadable ({exc}); the side-by-side layout's {list(default)} is used")
                out.append(default)
        if len(raw) > len(fallback):
            repairs.append(f"the answer gave {len(raw)} {name} boxes for {len(fallback)} conditions; the extra ones were ignored")
        return out


def last_error(messages: list[dict[str, Any]]) -> str:
    """The error quoted in the last retry turn of ``messages`` (for the plan's repair note)."""
    text = messages[-1]["content"][-1]["text"]
    return text.removeprefix("Your answer could not be used: ").split(". Reply again")[0]
