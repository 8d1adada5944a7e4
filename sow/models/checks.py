"""How big a model is before it is built, and whether it fits the memory at hand.

A model folder's configs or a checkpoint's header say how many parameters the model has; a
hostile or mistaken one can ask for hundreds of GB, and building it would end in the OOM
killer or a traceback. Every door that loads a model passes :func:`check_model_size` first:

- a folder of configs (with or without weights): each component is built on PyTorch's
  ``meta`` device (shapes only, no memory; about half a second for SD 2.1's UNet), which also
  catches config values the model classes reject, before anything is allocated;
- a ``.safetensors`` checkpoint: its header is read and checked (:func:`safetensors_header`;
  a malformed header is an input error, never a crash) and the tensors' sizes summed.

The weights' bytes (parameters times the bytes of the run's dtype) must fit the memory of
the device the model goes to (free GPU memory, or the system's available memory for the CPU);
otherwise the load is refused in one line naming both numbers. This is a lower bound (a run
needs activations too), chosen so that no model that could run is refused.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sow.errors import ModelLoadError

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""A ``.safetensors`` header larger than this (100 MB, safetensors' own limit) is refused unread."""

MAX_CONFIG_DEPTH = 1_000
"""Any layer or block count in a model config above this is refused before the meta build (which
would otherwise spend minutes creating millions of empty modules)."""

DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
               "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
"""Bytes per element of the dtypes a ``.safetensors`` header may name."""


def gib(n: int | float) -> str:
    return f"{n / 2**30:,.1f} GiB"


# -- checkpoints ------------------------------------------------------------------------------


def safetensors_header(path: Path, what: str = "checkpoint") -> dict[str, Any]:
    """The tensor entries of a ``.safetensors`` file's header (name -> {dtype, shape, data_offsets}), checked.

    The header is an 8-byte little-endian length and that many bytes of JSON; every entry's
    dtype, shape and offsets must be well-formed and lie inside the file. Anything else is a
    :class:`ModelLoadError` naming the file: a hostile file is an input error, not a crash.
    """
    def bad(reason: str) -> ModelLoadError:
        return ModelLoadError(f"{what} {path.name}: not a valid .safetensors file ({reason})")

    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise bad("shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise bad(f"its header claims {length:,} bytes")
            raw = handle.read(length)
    except OSError as exc:
        raise ModelLoadError(f"{what} {path.name}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_bytes = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"entry {name[:60]!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise bad(f"tensor {name[:60]!r} has an unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise bad(f"tensor {name[:60]!r} has a malformed shape")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise bad(f"tensor {name[:60]!r} lies outside the file")
        elements = 1
        for d in shape:
            elements *= d
        if elements * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise bad(f"tensor {name[:60]!r}: its shape and its byte range disagree")
        tensors[name] = entry
    return tensors


def checkpoint_parameters(path: Path, what: str = "checkpoint") -> int:
    """The number of values a ``.safetensors`` checkpoint holds (from its checked header)."""
    total = 0
    for entry in safetensors_header(path, what).values():
        elements = 1
        for d in entry["shape"]:
            elements *= d
        total += elements
    return total


# -- folders of configs ---------------------------------------------------------------------


COMPONENTS = {
    "unet": ("unet", "config.json"),
    "vae": ("vae", "config.json"),
    "text_encoder": ("text_encoder", "config.json"),
    "text_encoder_2": ("text_encoder_2", "config.json"),
}
"""The components whose parameters count, and where their configs sit in a diffusers folder."""


def read_config(folder: Path, name: str) -> dict[str, Any] | None:
    """``folder/<name>/config.json`` as a dict, None when absent; a malformed one is a :class:`ModelLoadError`."""
    sub, file = COMPONENTS[name]
    path = folder / sub / file
    if not path.is_file():
        return None
    return read_json_config(path, f"model folder {folder}: {sub}/{file}")


def read_json_config(path: Path, where: str, what: str = "model config") -> dict[str, Any]:
    """A model config file as a dict (at most 1 MiB, a regular file, a JSON object); else a :class:`ModelLoadError`."""
    from sow.errors import InputError
    from sow.io.files import parse_json, read_regular_text

    try:
        data = parse_json(read_regular_text(path, what, 1024 * 1024), where)
    except InputError as exc:
        raise ModelLoadError(str(exc)) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{where} is not a JSON object")
    return data


def _check_depths(config: Mapping[str, Any], where: str) -> None:
    """Refuse absurd layer or block counts before the meta build would spend minutes on them."""
    for key, value in config.items():
        if not ("layers" in key or "blocks" in key or "heads" in key or key.endswith("_types")):
            continue
        values = value if isinstance(value, list) else [value]
        if len(values) > MAX_CONFIG_DEPTH:
            raise ModelLoadError(f"{where}: {key} lists {len(values):,} entries; at most {MAX_CONFIG_DEPTH:,}")
        for v in values:
            if isinstance(v, list):
                if len(v) > MAX_CONFIG_DEPTH:
                    raise ModelLoadError(f"{where}: {key} lists {len(v):,} entries; at most {MAX_CONFIG_DEPTH:,}")
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > MAX_CONFIG_DEPTH:
                raise ModelLoadError(f"{where}: {key} = {v:g} is over {MAX_CONFIG_DEPTH:,}")


MAX_TRAIN_TIMESTEPS = 100_000
"""A scheduler config's ``num_train_timesteps`` above this is refused (SD uses 1000)."""


def check_scheduler_config(config: Mapping[str, Any], where: str) -> None:
    """A scheduler config's numbers make a DDIM schedule: positive betas below 1, a count of timesteps, an offset inside it.

    Diffusers accepts a negative ``beta_start`` or ``steps_offset`` and the run then fails deep in
    the loop (NaN from a square root, an index past the table); here it is one line naming the key.
    """
    import math

    def number(key: str, default: Any) -> Any:
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ModelLoadError(f"{where}: {key} = {value!r} is not a finite number")
        return value

    steps = number("num_train_timesteps", 1000)
    if not isinstance(steps, int) or not 2 <= steps <= MAX_TRAIN_TIMESTEPS:
        raise ModelLoadError(f"{where}: num_train_timesteps = {steps!r}; expected a whole number in 2 .. {MAX_TRAIN_TIMESTEPS:,}")
    offset = number("steps_offset", 0)
    if not isinstance(offset, int) or not 0 <= offset < steps:
        raise ModelLoadError(f"{where}: steps_offset = {offset!r}; expected a whole number in 0 .. {steps - 1}")
    if config.get("trained_betas") is None:
        start, end = number("beta_start", 0.0001), number("beta_end", 0.02)
        if not 0 < start <= end < 1:
            raise ModelLoadError(f"{where}: beta_start = {start!r}, beta_end = {end!r}; expected 0 < beta_start <= beta_end < 1")
    try:
        from diffusers import DDIMScheduler

        alphas = DDIMScheduler.from_config(dict(config)).alphas_cumprod
    except Exception as exc:  # noqa: BLE001 - diffusers rejects bad values with many types
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{where}: its values do not make a DDIM schedule ({type(exc).__name__}: {first})") from None
    if not bool(((alphas > 0) & (alphas <= 1)).all()):
        raise ModelLoadError(f"{where}: its betas give noise levels outside (0, 1]")


def meta_module(name: str, config: dict[str, Any]):
    """The component ``name`` built from ``config`` on the meta device (shapes, no memory)."""
    import torch

    with torch.device("meta"):
        if name == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_config(config)
        if name == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_config(config)
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        fields = {k: v for k, v in config.items() if k not in ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype")}
        cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
        return cls(CLIPTextConfig(**fields))


def meta_parameters(build: Callable[[], Any], where: str) -> int:
    """The parameter count of the module ``build()`` makes on the meta device (shapes, no memory).

    A config value the model classes refuse (a negative width, a wrong type, channels that do
    not divide into groups) is a :class:`ModelLoadError` naming ``where`` and the problem.
    """
    import torch

    try:
        with torch.device("meta"):
            module = build()
    except Exception as exc:  # noqa: BLE001 - model classes reject bad values with many types
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{where}: its values do not make a model ({type(exc).__name__}: {first})") from None
    return sum(p.numel() for p in module.parameters())


def folder_parameters(folder: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """(the parameter count, the configs read) of a diffusers folder or a folder of configs, built on meta.

    A config value the model classes refuse (a negative width, a wrong type, channels that do
    not divide into groups) is a :class:`ModelLoadError` naming the file and the problem.
    """
    total, configs = 0, {}
    for name, (sub, file) in COMPONENTS.items():
        config = read_config(folder, name)
        if config is None:
            continue
        where = f"model folder {folder}: {sub}/{file}"
        _check_depths(config, where)
        total += meta_parameters(lambda: meta_module(name, config), where)
        configs[name] = config
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if configs and scheduler.is_file():
        from sow.errors import InputError
        from sow.io.files import parse_json, read_regular_text

        where = f"model folder {folder}: scheduler/scheduler_config.json"
        try:
            data = parse_json(read_regular_text(scheduler, "scheduler config", 1024 * 1024), where)
        except InputError as exc:
            raise ModelLoadError(str(exc)) from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"{where} is not a JSON object")
        check_scheduler_config(data, where)
    return total, configs


# -- memory at hand ---------------------------------------------------------------------------


def available_memory(device: Any) -> tuple[int, str]:
    """(bytes free, a name for them) on ``device``: a GPU's free memory, or the system's available memory."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "of available memory"
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "of free memory"


def check_fits(parameters: int, dtype: Any, device: Any, what: str) -> None:
    """Refuse, in one line naming both sizes, a model whose weights alone do not fit ``device``'s memory."""
    import torch

    bytes_per = torch.empty((), dtype=dtype, device="meta").element_size()
    needed = parameters * bytes_per
    free, label = available_memory(device)
    if needed > free:
        raise ModelLoadError(
            f"{what} has {parameters / 1e9:,.2f} billion parameters: {gib(needed)} of weights in {str(dtype).removeprefix('torch.')}, "
            f"but {gib(free)} {label}; choose a smaller model or a machine with more memory"
        )


def check_file_fits(path: Path, what: str) -> None:
    """A file that is read whole into system memory (a LoRA) must be smaller than the memory available."""
    size = path.stat().st_size
    free, label = available_memory("cpu")
    if size > free:
        raise ModelLoadError(f"{what} is {gib(size)}, but {gib(free)} {label}; it is read whole into memory")


def check_model_size(spec: str, device: Any, dtype: Any) -> dict[str, dict[str, Any]]:
    """Check a local model (folder or ``.safetensors``) before it is built: valid, and small enough for ``device``.

    ``device`` and ``dtype`` are resolved torch values. Returns the configs read (empty for a
    checkpoint, a hub id or an embedded model); hub ids and the embedded tiny models are not
    checked here (a hub model's configs are not local yet).
    """
    path = Path(spec).expanduser()
    if spec in ("tiny", "tiny-sdxl"):
        return {}
    if path.is_dir():
        parameters, configs = folder_parameters(path)
        if configs:
            check_fits(parameters, dtype, device, f"model folder {path}")
        return configs
    if path.suffix == ".safetensors" and path.is_file():
        check_fits(checkpoint_parameters(path), dtype, device, f"checkpoint {path.name}")
    return {}


def check_vae(spec: str, unet_config: Mapping[str, Any] | Any | None, device: Any = "cpu", dtype: Any = "fp32") -> None:
    """A replacement VAE (``--vae``) folder: valid config, small enough, and latents the UNet takes.

    ``unet_config``: the model's UNet config (a dict or a diffusers ``FrozenDict``), or None when
    it is not known yet; ``device`` and ``dtype`` are resolved torch values. A hub id is not
    checked here (its config is not local).
    """
    path = Path(spec).expanduser()
    if not path.is_dir():
        return
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"VAE {spec!r}: no config.json; pass an AutoencoderKL folder or hub id")
    where = f"VAE {spec}: config.json"
    config = read_json_config(config_path, where, "VAE config")
    _check_depths(config, where)
    try:
        module = meta_module("vae", config)
    except Exception as exc:  # noqa: BLE001 - the VAE class rejects bad values with many types
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{where}: its values do not make a VAE ({type(exc).__name__}: {first})") from None
    check_fits(sum(p.numel() for p in module.parameters()), dtype, device, f"VAE {spec}")
    if unet_config is not None:
        vae_fits_unet(module.config, unet_config, spec)


def vae_fits_unet(vae_config: Any, unet_config: Any, spec: str) -> None:
    """The VAE's latent channels must be the UNet's input channels (SD 1/2/XL: 4; SD 3 and FLUX VAEs have 16)."""
    def get(config: Any, key: str) -> Any:
        return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)

    latent, takes = get(vae_config, "latent_channels"), get(unet_config, "in_channels")
    if latent is not None and takes is not None and latent != takes:
        raise ModelLoadError(f"VAE {spec} makes {latent}-channel latents but this model's UNet takes {takes}; pass a VAE of the model's family")
