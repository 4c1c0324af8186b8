"""Real data: interaction logs, the leave-one-out split, semantic-ID files and building SIDs."""

from .catalog_check import check_items_have_sids
from .collaborative_embeddings import SasRecConfig, cold_fallback, cold_mask, sasrec_embeddings
from .embedding_file import load_item_embeddings, save_item_embeddings
from .interactions import DataError, SequenceData, load_inter, load_interactions, load_sequences
from .rq_kmeans import SidReport, deduplicate, is_dedup_level, kmeans, rq_kmeans, sid_report
from .semantic_ids import (
    SidBuild,
    build_collaborative_sids,
    build_sids,
    collaborative_embeddings,
    combine_embeddings,
)
from .sid_file import load_sid_json, load_sids, save_sid_csv, save_sid_json, save_sids
from .split import DEFAULT_MAX_HISTORY, EvalCase, LeaveOneOut, cap_history, leave_one_out
from .text_embeddings import load_item_text, text_embeddings

__all__ = ["DEFAULT_MAX_HISTORY", "DataError", "EvalCase", "LeaveOneOut", "SasRecConfig", "SequenceData", "SidBuild",
           "SidReport", "build_collaborative_sids", "build_sids", "cap_history", "check_items_have_sids",
           "cold_fallback", "cold_mask", "collaborative_embeddings", "combine_embeddings", "deduplicate",
           "is_dedup_level", "kmeans", "leave_one_out", "load_inter", "load_interactions", "load_item_embeddings",
           "load_item_text", "load_sequences", "load_sid_json", "load_sids", "rq_kmeans", "sasrec_embeddings",
           "save_item_embeddings", "save_sid_csv", "save_sid_json", "save_sids", "sid_report", "text_embeddings"]
