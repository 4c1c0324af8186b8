"""Engines: what turns validated requests into recommendations. Every engine answers exactly as
:func:`~xgr_toolkit.reference.reference_beam_search` does; they differ only in speed."""

from __future__ import annotations

from typing import Protocol

from .engine import GREngine
from .model_dir import GRModel
from .reference import reference_beam_search
from .request import RecRequest, ScoredItem

__all__ = ["ENGINES", "Engine", "ReferenceEngine", "build_engine"]


class Engine(Protocol):
    def warmup(self) -> None:
        """Prepare every shape the engine will serve (compile, capture); nothing after it compiles."""
        ...

    def recommend(self, requests: list[RecRequest]) -> list[list[ScoredItem]]:
        """One list of items per request, best first."""
        ...

    def close(self) -> None:
        """Done with the engine: stop what runs in the background and let its memory go."""
        ...


class ReferenceEngine:
    """One request at a time, full recompute, full sort: the definition, not the fast path."""

    def __init__(self, model: GRModel, beam_width: int | None = None):
        self.model = model  # any beam width: nothing is sized ahead

    def warmup(self) -> None:
        """Nothing to prepare."""

    def recommend(self, requests: list[RecRequest]) -> list[list[ScoredItem]]:
        return [reference_beam_search(self.model.decoder, self.model.catalog, r) for r in requests]

    def close(self) -> None:
        """Nothing runs in the background."""


ENGINES = {"reference": ReferenceEngine, "fast": GREngine}


def build_engine(model: GRModel, name: str = "reference", beam_width: int | None = None) -> Engine:
    """The engine ``name`` for ``model``, sized for beams up to ``beam_width`` (default: the model's
    ``beam.beam_width``): a one-shot command passes what it was asked for."""
    if name not in ENGINES:
        raise ValueError(f"engine {name!r} is not available; allowed {sorted(ENGINES)}")
    return ENGINES[name](model, beam_width=beam_width)
