"""Semantic-ID files <-> :class:`~xgr_toolkit.catalog.ItemCatalog`.

JSON, as LETTER and TIGER reimplementations write it (``semantic_ids.letter.json``)::

    {"0": ["<a_183>", "<b_70>", "<c_232>", "<d_6>"], "1": [...], ...}

keys are **0-based** item indices (``key = item_id - 1``: item ids are 1-based), the token of
level ``j`` is ``<x_c>`` with ``x`` the ``j``-th letter and ``c`` the code. CSV: the catalog's own
``item_id,code_0,...,code_{L-1}`` (item ids as they are). Collisions (several items, one SID) are kept.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import torch

from ..catalog import CatalogError, ItemCatalog

__all__ = ["load_sid_json", "load_sids", "save_sid_csv", "save_sid_json", "save_sids"]

_TOKEN = re.compile(r"<([a-z])_(\d+)>")


def _parse_token(token, level: int, where: str) -> int:
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    letter = chr(ord("a") + level)
    if match is None or match.group(1) != letter:
        raise CatalogError(f"{where}: level {level} token must look like '<{letter}_CODE>'; got {token!r}")
    return int(match.group(2))


def load_sid_json(path: str | Path, num_codes: int | None = None) -> ItemCatalog:
    """Read a ``{"item_id - 1": ["<a_c0>", "<b_c1>", ...]}`` file into a catalog of 1-based item ids.

    ``num_codes`` (C) defaults to the largest code + 1; pass the codebook size when known (LETTER: 256).
    """
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CatalogError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(table, dict) or not table:
        raise CatalogError(f"{path}: expected a non-empty object {{\"0\": [\"<a_1>\", ...], ...}}")
    levels = None
    item_ids, codes = [], []
    for key, tokens in table.items():
        where = f"{path}: key {key!r}"
        if not key.isdigit():
            raise CatalogError(f"{where}: keys must be 0-based item indices (item_id - 1)")
        if not isinstance(tokens, list) or not tokens:
            raise CatalogError(f"{where}: value must be a non-empty list of tokens; got {tokens!r}")
        if levels is None:
            levels = len(tokens)
        elif len(tokens) != levels:
            raise CatalogError(f"{where}: {len(tokens)} tokens, but the first entry has {levels}")
        item_ids.append(int(key) + 1)
        codes.append([_parse_token(t, j, where) for j, t in enumerate(tokens)])
    codes_t = torch.tensor(codes, dtype=torch.int64)
    largest = int(codes_t.max()) + 1
    if num_codes is None:
        num_codes = largest
    elif largest > num_codes:
        raise CatalogError(f"{path}: code {largest - 1} does not fit {num_codes} codes a level")
    return ItemCatalog(torch.tensor(item_ids), codes_t, num_codes)


def save_sid_json(catalog: ItemCatalog, path: str | Path) -> Path:
    """Write the JSON form; keys ``item_id - 1`` in item-id order."""
    if catalog.levels > 26:
        raise CatalogError(f"{catalog.levels} levels do not fit the letters a..z of the JSON form; use CSV")
    if int(catalog.item_ids.min()) < 1:
        raise CatalogError("the JSON form needs 1-based item ids (its keys are item_id - 1)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = catalog.item_ids.argsort()
    letters = [chr(ord("a") + j) for j in range(catalog.levels)]
    table = {str(int(catalog.item_ids[r]) - 1):
             [f"<{x}_{c}>" for x, c in zip(letters, catalog.codes[r].tolist(), strict=True)] for r in order.tolist()}
    path.write_text(json.dumps(table))
    return path


def save_sid_csv(catalog: ItemCatalog, path: str | Path) -> Path:
    """Write ``item_id,code_0,...`` (readable by :meth:`ItemCatalog.from_csv`), item-id order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = catalog.item_ids.argsort()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id"] + [f"code_{j}" for j in range(catalog.levels)])
        for r in order.tolist():
            writer.writerow([int(catalog.item_ids[r])] + catalog.codes[r].tolist())
    return path


def load_sids(path: str | Path, num_codes: int | None = None) -> ItemCatalog:
    """JSON (``.json``) or CSV (any other suffix); ``num_codes`` defaults to the largest code + 1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SID file")
    if path.suffix == ".json":
        return load_sid_json(path, num_codes)
    if num_codes is None:  # the largest code + 1; from_csv checks the file itself
        with path.open(newline="") as f:
            rows = list(csv.reader(f))[1:]
        num_codes = 1 + max((int(v) for row in rows for v in row[1:] if v.strip().lstrip("-").isdigit()), default=0)
    return ItemCatalog.from_csv(path, num_codes)


def save_sids(catalog: ItemCatalog, path: str | Path) -> Path:
    """JSON for a ``.json`` path, CSV otherwise."""
    return save_sid_json(catalog, path) if Path(path).suffix == ".json" else save_sid_csv(catalog, path)
