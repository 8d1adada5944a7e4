"""A FLUX.2 [klein] transformer from one original-layout ``.safetensors`` file.

Black Forest Labs publish FLUX.2 klein as a single file holding the transformer only, in their
own tensor names (``double_blocks.*``, ``single_blocks.*``, ``single_stream_modulation.lin``).
diffusers converts it (``Flux2Transformer2DModel.from_single_file``) given the transformer's
config; the VAE, the Qwen3 text encoder, its tokenizer and the scheduler come from a *base*
model in diffusers layout: by default the klein repository in the local Hugging Face cache
(:data:`KLEIN_BASE`), or the loader option ``base`` (a local folder or another hub id). The
``flux2`` family checks the file first (a valid header, small enough for the memory at hand:
:func:`sow.models.flow.families.check_flow_model_size`); only ``.safetensors`` files are claimed,
so nothing pickled is ever read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sow.engine.backbone import LoadRequest
from sow.errors import ModelLoadError

KLEIN_BASE = "black-forest-labs/FLUX.2-klein-4B"
"""Where the other components of a klein single file come from unless ``base`` says otherwise."""

FLUX2_SINGLE_FILE_KEY = "single_stream_modulation.lin.weight"
"""A tensor only FLUX.2's original layout holds (FLUX.1 modulates each single block on its own)."""


def load_flux2_single_file(path: Path, request: LoadRequest) -> dict[str, Any]:
    """The components of a klein pipeline whose transformer is the file ``path`` (see the module docstring)."""
    import diffusers

    from sow.models.hub import offline_reason

    base = str(request.options.get("base") or KLEIN_BASE)
    local = Path(base).expanduser().is_dir() or offline_reason() is not None
    try:
        transformer = diffusers.Flux2Transformer2DModel.from_single_file(  # pickle-policy: .safetensors only (claims checked the suffix)
            str(path), config=base, subfolder="transformer", local_files_only=local
        )
        pipe = diffusers.Flux2KleinPipeline.from_pretrained(base, transformer=transformer, local_files_only=local, use_safetensors=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # a user's file and a base from the cache or the hub: errors of many types
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"FLUX.2 single file {path.name} could not be loaded with the other components from {base!r}: {first} "
            "(the file holds the transformer only; pass the loader option base= a klein folder in diffusers layout)"
        ) from None
    return {k: v for k, v in pipe.components.items() if v is not None}
