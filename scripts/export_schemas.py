"""Export the JSON Schemas of sow's pydantic models to the top-level ``schemas/`` folder.

Besides ``sow/schemas.py``'s models it exports the eval config, the eval spec line, the eval's
row (one line of ``rows.jsonl``) and the performance settings, which live beside the code that reads them. Run after changing any of
them; ``tests/test_schemas.py`` fails while the files drift::

    python scripts/export_schemas.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sow.eval.spec import SpecItem  # noqa: E402
from sow.eval.config import EvalConfig  # noqa: E402
from sow.eval.rows import EvalRow  # noqa: E402
from sow.models.performance import PerformanceSettings  # noqa: E402
from sow.schemas import EXPORTED_MODELS  # noqa: E402

MODELS = {
    **EXPORTED_MODELS,
    "eval-config": EvalConfig,
    "eval-spec-item": SpecItem,
    "eval-row": EvalRow,
    "performance-settings": PerformanceSettings,
}

SCHEMA_DIR = ROOT / "schemas"


def rendered() -> dict[str, str]:
    """File name -> JSON text of each exported model's schema."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        for name, model in MODELS.items()
    }


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for filename, text in rendered().items():
        (SCHEMA_DIR / filename).write_text(text, encoding="utf-8")
        print(f"wrote schemas/{filename}")


if __name__ == "__main__":
    main()
