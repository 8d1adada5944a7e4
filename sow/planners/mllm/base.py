"""The shared half of every local multimodal-LLM planner: stages, retry, loading, model cache.

A family plugin (``sow-llava``, ``sow-qwen-vl``, or yours) subclasses :class:`MLLMPlanner`
and writes two methods:

``load(self) -> object``
    Load the model and its processor for ``self.options`` and return them in any object.
    Use :func:`load_kwargs` for the ``from_pretrained`` arguments (device, dtype,
    ``device_map``, bitsandbytes quantization) and :func:`describe_load_error` for a
    one-line :class:`~sow.errors.ModelLoadError`.
``chat(self, loaded, messages, image) -> str``
    Render ``messages`` (Hugging Face chat format, from :mod:`sow.planners.toolkit.prompts`) with the
    model's chat template, attach ``image`` where the message has ``{"type": "image"}``,
    append ``self.prefill`` to the rendered prompt, generate with ``self.generate_kwargs(...)``
    (greedy, the token budget, stop after the first JSON object; with constrained decoding,
    :mod:`sow.planners.mllm.constrained`, the logits processor that holds the answer to the
    stage's JSON Schema, and an empty prefill) and return ``self.prefill`` + the new text.

The stages, the answer reading, the retry with the error fed back, the fallbacks and the
repair are the planner toolkit's (:class:`sow.planners.toolkit.StagedPlanner`); this class
answers its one question, :meth:`~sow.planners.toolkit.StagedPlanner.ask_model`, with
``chat`` on the model of ``load``. Loaded models are kept per process (:func:`cached_model`):
a batch run loads once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, ClassVar, Literal

from PIL import Image
from pydantic import Field

from sow.errors import InputError, ModelLoadError
from sow.planners.toolkit.answers import json_object_closed
from sow.planners.mllm.constrained import constrained_available, require_constrained, schema_processor
from sow.planners.toolkit import PlannerOptions, Question, StagedPlanner
from sow.planners.toolkit.decoding import decoding_schema, longest_answer

Quantize = Literal["4bit", "8bit"]
Constrained = Literal["auto", "on", "off"]

DEFAULT_MAX_NEW_TOKENS = 200
"""Token budget of one answer: the longest (stage 1, two sentences of JSON) needs ~120."""

LOAD_OPTIONS = ("device", "dtype", "device_map", "quantize", "local_files_only")
"""The options that change the loaded model (the others only change how it is asked)."""

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


class MLLMOptions(PlannerOptions):
    """Settings of a local multimodal planner (``--planner-option KEY=VALUE`` on the CLI)."""

    model: str | None = Field(None, description="Hub id or local folder of the model (default: the family's).")
    device: str = Field("auto", description="cpu, cuda, cuda:N, mps or auto (cuda when available).")
    dtype: str = Field("auto", description="fp32, fp16, bf16 or auto (bf16 on cuda, fp32 on cpu).")
    device_map: str | None = Field(None, description="accelerate device map, e.g. 'auto' to spread a large model over GPUs and CPU.")
    quantize: Quantize | None = Field(None, description="4bit (nf4, bf16 compute) or 8bit with bitsandbytes.")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=8, le=4096, description="Token budget of one answer.")
    prefill_json: bool = Field(True, description="Start the model's answer with '{' so it answers in JSON from the first token (unconstrained decoding).")
    constrained: Constrained = Field(
        "auto", description="Constrained decoding to the stage's JSON Schema (llguidance): on, off, or auto (on when llguidance is installed)."
    )
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
    from sow.safety.security import safe_load_kwargs

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
    from sow.models.hub import offline_reason

    return options.local_files_only or offline_reason() is not None


def describe_load_error(family: str, model: str, options: MLLMOptions, exc: BaseException) -> ModelLoadError:
    """One line saying which model failed to load, how, and what to try."""
    from sow.models.hub import offline_reason

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


class MLLMPlanner(StagedPlanner):
    """A planner asking a local multimodal LLM the paper's three questions. Subclass per family."""

    default_model: ClassVar[str] = ""
    system_role: ClassVar[bool] = True
    """Whether the family's chat template has a system role (else instructions go in the user turn)."""
    options_class: ClassVar[type[MLLMOptions]] = MLLMOptions
    """The options model; a family with extra settings subclasses :class:`MLLMOptions`."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.model_id = self.options.model or self.default_model
        if self.options.constrained == "on":
            require_constrained(self.family or self.name)
        self.constrained = self.options.constrained == "on" or (self.options.constrained == "auto" and constrained_available())
        """Whether answers are decoded under the stage's JSON Schema (:mod:`sow.planners.mllm.constrained`)."""

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
        """Text put at the start of the model's turn (and of its answer): ``"{"``, or nothing when
        the answer is constrained (the schema then writes the ``{``) or ``prefill_json`` is off."""
        return "{" if self.options.prefill_json and not self.constrained else ""

    def generate_kwargs(self, tokenizer: Any, prompt_length: int) -> dict[str, Any]:
        """``model.generate`` arguments: greedy, the token budget, stop after the first JSON object;
        when constrained, the logits processor that keeps the answer inside the stage's schema.

        The schema is that of the question :meth:`ask_model` is answering (none outside it: the
        answer is then free). Its text is sized to ``max_new_tokens``; the budget grows only when
        the answer's fixed parts (the boxes of many conditions) need more.
        """
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.options.max_new_tokens,
            "do_sample": False,
            "stopping_criteria": stop_after_json(tokenizer, prompt_length, self.prefill),
        }
        question = _ASKING.get()
        if self.constrained and question is not None:
            schema = decoding_schema(question.answer_model, question.values, self.options.max_new_tokens)
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([schema_processor(tokenizer, schema)])
            kwargs["max_new_tokens"] = max(self.options.max_new_tokens, longest_answer(schema))
        return kwargs

    def cache_key(self) -> tuple:
        """What makes a loaded model reusable: the family, the model and the options used to load it."""
        loading = tuple((name, str(getattr(self.options, name))) for name in LOAD_OPTIONS)
        return (type(self).__qualname__, self.model_id, loading)

    def loaded(self) -> Any:
        """The model and processor of :meth:`load`, loaded once per process (:func:`cached_model`)."""
        return cached_model(self.cache_key(), self.load)

    def start(self) -> Any:
        """The loaded model, for the toolkit to hand to :meth:`ask_model`."""
        return self.loaded()

    def ask_model(self, session: Any, question: Question) -> str:
        """The toolkit's question as chat messages in the family's template, answered by :meth:`chat`.

        While :meth:`chat` runs, :meth:`generate_kwargs` knows the question (for its schema)."""
        token = _ASKING.set(question)
        try:
            return self.chat(session, question.messages(self.system_role), question.image)
        finally:
            _ASKING.reset(token)

    def notes(self, session: Any) -> list[str]:
        decoding = "constrained to the answer schema (llguidance)" if self.constrained else "free (answers read and repaired)"
        return [*super().notes(session), f"decoding: {decoding}"]


_ASKING: ContextVar[Question | None] = ContextVar("sow_mllm_question", default=None)
"""The question whose answer is being generated (set by :meth:`MLLMPlanner.ask_model` around ``chat``)."""
