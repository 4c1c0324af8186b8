"""Precomputed item embeddings in a safetensors file: ``item_ids`` int64 [N] and ``embeddings`` float32 [N, D].

The exchange format of ``xgr sid build --embeddings-file`` and ``xgr sid embed-text``: embeddings made
on one machine (a text encoder, a model of your own) are read on another to build semantic IDs. Row
``r`` of ``embeddings`` belongs to item ``item_ids[r]``; rows may come in any order, and items the data
does not hold are ignored. float16 and bfloat16 ``embeddings`` are read too (as float32), to keep
files small; nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .interactions import DataError

__all__ = ["EMBEDDINGS_TENSOR", "ITEM_IDS_TENSOR", "load_item_embeddings", "save_item_embeddings"]

ITEM_IDS_TENSOR = "item_ids"
EMBEDDINGS_TENSOR = "embeddings"
_FORMAT = f"'{ITEM_IDS_TENSOR}' int64 [N] and '{EMBEDDINGS_TENSOR}' float32 [N, D]"
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INTS = (torch.int64, torch.int32)


def _shape(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


def save_item_embeddings(path: str | Path, item_ids: list[int] | torch.Tensor, embeddings: torch.Tensor,
                         dtype: torch.dtype = torch.float32, metadata: dict[str, str] | None = None) -> Path:
    """Write ``embeddings`` [N, D] (row ``r`` for ``item_ids[r]``) as ``dtype`` (float32 or float16)."""
    ids = torch.as_tensor(item_ids, dtype=torch.int64).flatten()
    if embeddings.ndim != 2 or embeddings.shape[0] != ids.shape[0]:
        raise ValueError(f"embeddings {list(embeddings.shape)} for {ids.shape[0]} item ids: expected [N, D]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {ITEM_IDS_TENSOR: ids.contiguous(), EMBEDDINGS_TENSOR: embeddings.detach().to("cpu", dtype).contiguous()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_item_embeddings(path: str | Path, item_ids: list[int] | torch.Tensor) -> torch.Tensor:
    """[len(item_ids), D] float32 rows for ``sorted(item_ids)``, read from ``path``.

    Every error names the file and, where one is at fault, the tensor and the shape expected: a tensor
    missing or of the wrong dtype or shape, repeated item ids, non-finite values, or items of the data
    that have no row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such embeddings file (expected a safetensors file with {_FORMAT})")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable safetensors file ({err}); expected {_FORMAT}") from None
    for name in (ITEM_IDS_TENSOR, EMBEDDINGS_TENSOR):
        if name not in tensors:
            raise DataError(f"{path}: no tensor '{name}' (found {sorted(tensors)}); expected {_FORMAT}")
    ids, emb = tensors[ITEM_IDS_TENSOR], tensors[EMBEDDINGS_TENSOR]
    if ids.dtype not in _INTS or ids.ndim != 1:
        raise DataError(f"{path}: tensor '{ITEM_IDS_TENSOR}' is {_shape(ids)}; expected int64 [N]")
    if emb.dtype not in _FLOATS or emb.ndim != 2 or emb.shape[0] != ids.shape[0] or emb.shape[1] == 0:
        raise DataError(f"{path}: tensor '{EMBEDDINGS_TENSOR}' is {_shape(emb)}; expected float32 "
                        f"[N, D] = [{ids.shape[0]}, D] (one row per '{ITEM_IDS_TENSOR}' entry, D >= 1)")
    ids = ids.to(torch.int64)
    unique, counts = ids.unique(return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: tensor '{ITEM_IDS_TENSOR}' repeats item ids {unique[counts > 1][:10].tolist()}")
    emb = emb.float()
    if not torch.isfinite(emb).all():
        rows = (~torch.isfinite(emb)).any(dim=1)
        raise DataError(f"{path}: tensor '{EMBEDDINGS_TENSOR}' has non-finite values for item ids "
                        f"{ids[rows][:10].tolist()}")
    wanted = torch.as_tensor(sorted(int(i) for i in item_ids), dtype=torch.int64)
    order = ids.argsort()
    pos = torch.searchsorted(ids[order], wanted).clamp(max=max(0, ids.shape[0] - 1))
    found = ids[order][pos] == wanted if ids.numel() else torch.zeros_like(wanted, dtype=torch.bool)
    if not found.all():
        raise DataError(f"{path}: no row for {int((~found).sum())} of the data's {wanted.shape[0]} items "
                        f"(item ids {wanted[~found][:10].tolist()}) in tensor '{ITEM_IDS_TENSOR}'")
    return emb[order[pos]]
