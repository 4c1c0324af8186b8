"""The serving runtime: shared-prompt KV cache, device-side catalog, batched beam search."""

from .beam_search import BeamSearch
from .catalog_index import CatalogIndex, exclusion_pairs
from .gr_engine import GREngine, LaunchedBatch
from .kv_cache import BeamKVCache
from .prompt_store import PromptStore

__all__ = ["BeamKVCache", "BeamSearch", "CatalogIndex", "GREngine", "LaunchedBatch", "PromptStore", "exclusion_pairs"]
