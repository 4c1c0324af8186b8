"""Training GR decoders on semantic-ID sequences: batches, the reference loop, and a recipe."""

from .batches import PAD_TOKEN, batch_from_codes, batch_from_items, code_table, next_sid_loss
from .presets import DEFAULT_DROPOUT, DEFAULT_SIZE, RECIPE, SIZES, ModelSize
from .recipe import CONTEXT_TOKENS, MLP_RATIO, TRAINING_FILE, gr_model_config, train_model_dir
from .trainer import SampleTable, TrainConfig, TrainResult, train_decoder, warmup_cosine

__all__ = ["CONTEXT_TOKENS", "DEFAULT_DROPOUT", "DEFAULT_SIZE", "MLP_RATIO", "PAD_TOKEN", "RECIPE", "SIZES",
           "ModelSize", "SampleTable", "TRAINING_FILE", "TrainConfig", "TrainResult",
           "batch_from_codes", "batch_from_items", "code_table", "gr_model_config", "next_sid_loss", "train_decoder",
           "train_model_dir", "warmup_cosine"]
