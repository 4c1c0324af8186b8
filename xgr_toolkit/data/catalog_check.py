"""Data against a catalog: every item an interaction file names must have a SID, or the error says where."""

from __future__ import annotations

from pathlib import Path

from ..catalog import ItemCatalog
from .interactions import DataError, SequenceData

__all__ = ["check_items_have_sids"]


def _line_of(path: Path, *tokens: str) -> int | None:
    """The first line of ``path`` whose fields hold every one of ``tokens``."""
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if all(t in fields for t in tokens):
                return number
    return None


def check_items_have_sids(data: SequenceData, path: str | Path, catalog: ItemCatalog, source: str) -> None:
    """Raise DataError naming the first item of ``data`` (read from ``path``) that ``catalog`` lacks: its line, its
    user, how many items are missing, and the likely cause. ``source`` names the catalog ("MODEL's catalog")."""
    unknown = set(data.item_ids) - set(catalog.item_ids.tolist())
    if not unknown:
        return
    tokens = {v: k for k, v in data.item_index.items()}  # ids back to the file's tokens, where they were renamed
    users = {v: k for k, v in data.user_index.items()}
    user, item = next((u, i) for u, items in data.sequences.items() for i in items if i in unknown)
    user_token, item_token = users.get(user, str(user)), tokens.get(item, str(item))
    line = _line_of(Path(path), user_token, item_token)
    raise DataError(f"{path}:{line or '?'}: user {user_token} has item {item_token}, which {source} does not hold "
                    f"({len(unknown)} of the data's {len(data.item_ids)} items are not in it): the data is not the "
                    f"set the SIDs were built from (or the model trained on)")
