"""A recommendation request, validated at the boundary, and the scored items it returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .catalog import CatalogError, ItemCatalog
from .config import NORMALIZATIONS, ModelConfig
from .truncation import kept_start

__all__ = ["RecRequest", "RequestError", "ScoredItem", "build_request", "sid_tokens"]


class RequestError(ValueError):
    """A request field is missing, of the wrong type or out of range."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field, self.message = field_name, message


@dataclass(frozen=True)
class ScoredItem:
    item_id: int
    score: float  # cumulative log-probability of the SID
    sid: tuple[int, ...]

    def to_json(self) -> dict:
        return {"item_id": self.item_id, "score": self.score, "sid": list(self.sid)}


@dataclass(frozen=True)
class RecRequest:
    """What every engine takes: a prompt of token ids and the beam to run over it."""

    prompt: tuple[int, ...]  # [P] token ids, most recent last
    beam_width: int  # W
    top_k: int  # K <= W
    normalize: str = "vocab"
    exclude_items: frozenset[int] = field(default_factory=frozenset)
    truncated: int = 0  # history tokens dropped to fit the model


def sid_tokens(cfg: ModelConfig, codes: torch.Tensor) -> torch.Tensor:
    """codes: [..., L] -> token ids [..., L]: code c at level j is sid_offset + j*C + c."""
    levels = torch.arange(codes.shape[-1], device=codes.device)
    return cfg.sid_offset + levels * cfg.codes + codes


_INT64 = (-2**63, 2**63 - 1)


def _int_list(field_name: str, values) -> list[int]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                        for v in values):
        raise RequestError(field_name, "must be a list of integers")
    if any(not _INT64[0] <= v <= _INT64[1] for v in values):  # JSON integers are unbounded; ids are int64
        raise RequestError(field_name, f"integers must be in [{_INT64[0]}, {_INT64[1]}]")
    return list(values)


def _int_in(field_name: str, value, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(field_name, f"must be an integer in [{low}, {high}]; got {value!r}")
    return value


def _sids_of(field_name: str, catalog: ItemCatalog, items: list[int]) -> torch.Tensor:
    """[n] item ids -> [n, L] codes; unknown ids are the request's fault."""
    try:
        return catalog.sids_of_items(torch.tensor(items, dtype=torch.int64))
    except CatalogError as err:
        raise RequestError(field_name, str(err)) from None


def build_request(cfg: ModelConfig, catalog: ItemCatalog, *, history_items=None, history_tokens=None,
                  beam_width: int, top_k: int, max_beam_width: int, exclude_items=(),
                  exclude_history: bool = False, normalize: str = "vocab") -> RecRequest:
    """Validate one request and write its history as a prompt.

    Exactly one of ``history_items`` (item ids, written as their SID tokens in order) and
    ``history_tokens`` (token ids in ``[0, vocab_size)``) is given. A history longer than
    ``cfg.max_prompt_tokens`` keeps its most recent part by ``cfg.truncation`` (truncation.py): whole
    items for an item history, tokens for a token history; ``RecRequest.truncated`` says how many tokens
    were dropped.
    """
    if (history_items is None) == (history_tokens is None):
        raise RequestError("history", "give exactly one of history (item ids) and history_tokens")
    beam_width = _int_in("beam_width", beam_width, 1, max_beam_width)
    top_k = _int_in("k", top_k, 1, beam_width)
    if normalize not in NORMALIZATIONS:
        raise RequestError("normalize", f"must be one of {list(NORMALIZATIONS)}; got {normalize!r}")
    exclude = set(_int_list("exclude", exclude_items))
    _sids_of("exclude", catalog, sorted(exclude))
    if history_items is not None:
        items = _int_list("history", history_items)
        if not items:
            raise RequestError("history", "must hold at least one item id")
        start = kept_start(len(items), max(1, cfg.max_prompt_tokens // cfg.levels), cfg.truncation)  # whole items
        prompt = sid_tokens(cfg, _sids_of("history", catalog, items[start:])).flatten().tolist()
        dropped = start * cfg.levels
        if exclude_history:
            exclude |= set(items)
    else:
        tokens = _int_list("history_tokens", history_tokens)
        if not tokens:
            raise RequestError("history_tokens", "must hold at least one token")
        bad = [t for t in tokens if not 0 <= t < cfg.vocab_size]
        if bad:
            raise RequestError("history_tokens", f"tokens must be in [0, {cfg.vocab_size}); got {bad[:5]}")
        dropped = kept_start(len(tokens), cfg.max_prompt_tokens, cfg.truncation)
        prompt = tokens[dropped:]
    return RecRequest(tuple(prompt), beam_width, top_k, normalize, frozenset(exclude), dropped)
