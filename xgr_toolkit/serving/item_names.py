"""Optional human-readable item names beside a model directory: ``item_names.json``.

A JSON object ``{"<item id>": "name", ...}``; items without a name are simply not in it. JSON, not
pickle: a served archive never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["ITEM_NAMES_FILE", "load_item_names", "save_item_names"]

ITEM_NAMES_FILE = "item_names.json"


def save_item_names(model_dir: str | Path, names: dict[int, str]) -> Path:
    path = Path(model_dir) / ITEM_NAMES_FILE
    path.write_text(json.dumps({str(int(item)): str(name) for item, name in names.items()}, indent=0))
    return path


def load_item_names(model_dir: str | Path) -> dict[int, str] | None:
    """item id -> name, or None when the directory has no names file."""
    path = Path(model_dir) / ITEM_NAMES_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ValueError(f"{path}: must be a JSON object mapping item ids to name strings")
    try:
        return {int(key): name for key, name in raw.items()}
    except ValueError:
        raise ValueError(f"{path}: keys must be integer item ids") from None
