"""Leave-one-out evaluation: every user's held-out target, full ranking through an engine.

Each user's history, capped at ``max_history`` items by the model's truncation policy
(``model.truncation``, or the ``truncation`` given: the same model evaluated both ways), goes through
:func:`~xgr_toolkit.request.build_request` and the engine named (``build_engine(model, name)``: the
same path that serves), with constrained beam search over the catalog's valid items; the rank of the
target among the returned top-K gives Recall@K and NDCG@K.
Nothing is excluded by default (as in TIGER); ``exclude_history`` removes the history's items.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from ..config import BeamConfig
from ..data import DEFAULT_MAX_HISTORY, LeaveOneOut
from ..engines import build_engine
from ..model_dir import GRModel
from ..request import build_request
from .metrics import DEFAULT_KS, hit_rank, ranking_metrics
from .popularity import popularity_ranking

__all__ = ["EvalResult", "evaluate_model", "evaluate_popularity"]


@dataclass
class EvalResult:
    split: str
    users: int
    metrics: dict[str, float]
    seconds: float
    settings: dict = field(default_factory=dict)
    ranks: list[int] = field(default_factory=list, repr=False)  # per user (split order), -1: a miss

    def to_json(self) -> dict:
        return {"split": self.split, "users": self.users, **{k: round(v, 6) for k, v in self.metrics.items()},
                "seconds": round(self.seconds, 2), **self.settings}

    def line(self) -> str:
        m = self.metrics
        return (f"{self.split}: {self.users} users  R@5 {m['recall@5']:.4f}  R@10 {m['recall@10']:.4f}  "
                f"N@5 {m['ndcg@5']:.4f}  N@10 {m['ndcg@10']:.4f}  ({self.seconds:.1f} s)")


def _engine(model: GRModel, name: str, beam_width: int, top_k: int, batch: int | None):
    """The serving engine, sized for evaluation: W = beam_width, large batches, graphs on a GPU."""
    cuda = next(model.decoder.parameters()).is_cuda
    serve = dataclasses.replace(model.config.serve, device="cuda" if cuda else "cpu", compile=cuda, cuda_graphs=cuda,
                                max_batch=batch or (64 if cuda else 16),
                                prompt_buckets=[model.config.model.max_prompt_tokens])
    config = dataclasses.replace(model.config, beam=BeamConfig(beam_width, top_k), serve=serve)
    engine = build_engine(dataclasses.replace(model, config=config), name)
    engine.warmup()
    return engine


def evaluate_model(model: GRModel, split: LeaveOneOut, which: str = "test", engine: str = "fast",
                   beam_width: int = 20, top_k: int = 10, max_history: int = DEFAULT_MAX_HISTORY,
                   exclude_history: bool = False, limit_users: int | None = None, chunk: int = 2048,
                   normalize: str = "vocab", ks=DEFAULT_KS, progress: bool = True,
                   batch: int | None = None, truncation: str | None = None) -> EvalResult:
    """Recall/NDCG@ks of ``model`` on ``split``'s ``which`` ("valid" or "test") targets, histories cut by
    ``truncation`` (``"sliding"`` or ``"stable"``; None: the model's ``model.truncation``). With
    ``max_history`` the model's own limit (``xgr eval``'s default), each case is cut exactly as the server
    cuts the user's whole history; a larger one is cut twice (here, then by the request), which under
    ``stable`` is not the same as once."""
    if top_k < max(ks):
        raise ValueError(f"top_k ({top_k}) must be >= the largest K ({max(ks)})")
    start = time.perf_counter()
    cfg = model.config.model
    if truncation is not None and truncation != cfg.truncation:
        cfg = dataclasses.replace(cfg, truncation=truncation)  # validated: a bad name is a ConfigError
    cases = split.cases(which, max_history, limit_users, cfg.truncation)
    runner = _engine(model, engine, beam_width, top_k, batch)
    order = sorted(range(len(cases)), key=lambda i: len(cases[i].history))  # equal prompt lengths batch together
    ranks = [-1] * len(cases)
    try:
        with tqdm(total=len(cases), desc=f"eval {which}", unit="user", disable=not progress,
                  dynamic_ncols=True) as bar:
            for begin in range(0, len(order), chunk):
                part = order[begin:begin + chunk]
                requests = [build_request(cfg, model.catalog, history_items=cases[i].history, beam_width=beam_width,
                                          top_k=top_k, max_beam_width=beam_width, exclude_history=exclude_history,
                                          normalize=normalize) for i in part]
                for i, items in zip(part, runner.recommend(requests), strict=True):
                    ranks[i] = hit_rank([it.item_id for it in items], cases[i].target)
                bar.update(len(part))
    finally:
        runner.close()
    settings = {"engine": engine, "beam_width": beam_width, "top_k": top_k, "max_history": max_history,
                "truncation": cfg.truncation, "exclude_history": exclude_history, "normalize": normalize}
    return EvalResult(which, len(cases), ranking_metrics(ranks, ks), time.perf_counter() - start, settings, ranks)


def evaluate_popularity(split: LeaveOneOut, which: str = "test", limit_users: int | None = None,
                        ks=DEFAULT_KS) -> EvalResult:
    """The popularity floor: items counted on every user's training part, the same list for all."""
    start = time.perf_counter()
    top = popularity_ranking(split, max(ks))
    cases = split.cases(which, DEFAULT_MAX_HISTORY, limit_users)
    ranks = [hit_rank(top, case.target) for case in cases]
    return EvalResult(which, len(cases), ranking_metrics(ranks, ks), time.perf_counter() - start,
                      {"model": "popularity"}, ranks)
