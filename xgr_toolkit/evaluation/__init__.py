"""Leave-one-out Recall/NDCG through the serving engine, and the popularity floor."""

from .evaluate import EvalResult, evaluate_model, evaluate_popularity
from .item_neighbours import evaluate_item_neighbours
from .metrics import DEFAULT_KS, hit_rank, ranking_metrics
from .popularity import popularity_ranking

__all__ = ["DEFAULT_KS", "EvalResult", "evaluate_item_neighbours", "evaluate_model", "evaluate_popularity", "hit_rank",
           "popularity_ranking", "ranking_metrics"]
