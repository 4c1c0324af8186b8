"""`make demo`: build a tiny random model and catalog, then print recommendations for a few histories."""

from __future__ import annotations

from pathlib import Path

from xgr_toolkit import build_request, load_model_dir, preset
from xgr_toolkit.engines import build_engine
from xgr_toolkit.synthetic import random_model_dir

MODEL_DIR = Path("build/demo-model")


def main() -> None:
    random_model_dir(MODEL_DIR, preset("tiny"), num_items=5000, seed=0, collisions=20)
    model = load_model_dir(MODEL_DIR)
    engine = build_engine(model, "reference")
    items = model.catalog.item_ids.tolist()
    for history in (items[:3], items[10:18], items[100:101]):
        request = build_request(model.config.model, model.catalog, history_items=history, beam_width=16,
                                top_k=5, max_beam_width=16, exclude_history=True)
        [recs] = engine.recommend([request])
        print(f"history {history}")
        for rank, item in enumerate(recs, 1):
            print(f"  {rank}. item {item.item_id:<6} score {item.score:8.3f}  sid {list(item.sid)}")


if __name__ == "__main__":
    main()
