"""Deprecated home of the safe-loading policy: it moved to :mod:`sow.safety.security`.

Plugins were told (docs/production.md, before this round) to read ``sow.io.security.load_policy()``,
``require_remote_code(what)`` and ``safe_load_kwargs()``; those names keep working from here, with
a ``DeprecationWarning`` that names the new module.
"""

from __future__ import annotations

import warnings

from sow.safety.security import load_policy, require_remote_code, safe_load_kwargs

warnings.warn("sow.io.security moved to sow.safety.security; import it from there", DeprecationWarning, stacklevel=2)

__all__ = ["load_policy", "require_remote_code", "safe_load_kwargs"]
