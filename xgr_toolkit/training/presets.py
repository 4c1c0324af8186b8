"""Named model sizes and the default training recipe of ``xgr train`` (docs/training.md says why).

The recipe is one set of settings for every data set: regularisation (dropout 0.3, label smoothing
0.1, weight decay 0.1), warm-up then cosine decay over at most 30 epochs, early stopping after 5
epochs without a lower validation loss, and the weights of the lowest validation loss kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from .trainer import TrainConfig

__all__ = ["DEFAULT_DROPOUT", "DEFAULT_SIZE", "RECIPE", "SIZES", "ModelSize"]


@dataclass(frozen=True)
class ModelSize:
    layers: int
    hidden: int
    heads: int
    kv_heads: int  # the SwiGLU width follows hidden (recipe.MLP_RATIO)


SIZES = {
    "tiny": ModelSize(layers=2, hidden=64, heads=4, kv_heads=2),  # CPU tests and slices
    "small": ModelSize(layers=4, hidden=256, heads=4, kv_heads=4),  # docs/results.md's best row (its MLP: 1024)
    "base": ModelSize(layers=6, hidden=384, heads=6, kv_heads=6),
}
DEFAULT_SIZE = "small"
DEFAULT_DROPOUT = 0.3  # on embeddings and residual branches, training only
RECIPE = TrainConfig(epochs=30, batch_size=1024, lr=2e-3, weight_decay=0.1, warmup_steps=200, label_smoothing=0.1,
                     patience=5)
