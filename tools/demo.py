"""`make demo`: a tiny model and catalog, packaged as a .mar and served by a real TorchServe on loopback.

Builds ``build/demo-model`` (random weights, 5,000 items with made-up names), packages
``model_store/demo.mar`` (what `xgr package build/demo-model --name demo` does), starts TorchServe on
127.0.0.1 with free ports, sends a few requests (one of them bad, to show the 4xx), prints the
recommendations, checks one answer against the library, and stops the server.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from xgr_toolkit import load_model_dir, preset
from xgr_toolkit.serving import PackageOptions, RecService, TorchServe, TorchServeError, package_model, save_item_names
from xgr_toolkit.synthetic import random_model_dir

MODEL_DIR, MODEL_STORE, SERVER_DIR = Path("build/demo-model"), Path("model_store"), Path("build/demo-torchserve")
NAME = "demo"
_ADJECTIVES = ("amber", "brisk", "cosy", "dusky", "eager", "fuzzy", "gilded", "hushed", "ivory", "jolly",
               "lunar", "misty", "nimble", "olive", "plush", "quiet", "rustic", "silver", "tidy", "velvet")
_NOUNS = ("kettle", "lamp", "notebook", "scarf", "teapot", "backpack", "candle", "mug", "blanket", "clock",
          "sneakers", "headphones", "umbrella", "wallet", "cushion", "planter", "journal", "poster", "radio", "vase")


def item_name(item_id: int) -> str:
    return f"{_ADJECTIVES[item_id % 20]} {_NOUNS[item_id // 20 % 20]} #{item_id}"


def build() -> Path:
    random_model_dir(MODEL_DIR, preset("tiny"), num_items=5000, seed=0, collisions=20)
    model = load_model_dir(MODEL_DIR)
    save_item_names(MODEL_DIR, {i: item_name(i) for i in model.catalog.item_ids.tolist()})
    return package_model(MODEL_DIR, NAME, MODEL_STORE, PackageOptions(max_beam_width=128, batch_size=4,
                                                                      max_batch_delay_ms=5))


def _short(values: list, keep: int = 6) -> str:
    """A long list as its first and last few entries."""
    if len(values) <= keep:
        return ", ".join(map(str, values))
    return f"{', '.join(map(str, values[:3]))}, ... {len(values) - 5} more ..., {', '.join(map(str, values[-2:]))}"


def show(title: str, body: dict, status: int, answer: dict | None, names: dict[int, str]) -> None:
    shown = ", ".join(f'"{key}": ' + (f"[{_short(value)}]" if isinstance(value, list) else json.dumps(value))
                      for key, value in body.items())
    print(f"\n> POST /predictions/{NAME} {{{shown}}}")
    if status != 200:
        print(f"< {status} {json.dumps(answer)}")
        return
    history = body.get("history")
    if history:
        print(f"  {title}: history {_short([names.get(i, str(i)) for i in history], keep=4)}")
    else:
        print(f"  {title}")
    for rank, item in enumerate(answer["items"], 1):
        print(f"  {rank}. {item.get('name', ''):<28} item {item['item_id']:<6} score {item['score']:8.3f}  "
              f"sid {item['sid']}")
    extra = f", {answer['truncated']} oldest history tokens dropped" if "truncated" in answer else ""
    print(f"  < 200 in {answer['timing_ms']['total']:.1f} ms (engine {answer['timing_ms']['engine']:.1f} ms){extra}")


def main() -> int:
    start = time.perf_counter()
    mar = build()
    print(f"built {MODEL_DIR}/ and packaged {mar} ({mar.stat().st_size / 1e6:.1f} MB) "
          f"in {time.perf_counter() - start:.1f} s")
    model = load_model_dir(MODEL_DIR)
    items = model.catalog.item_ids.tolist()
    names = {i: item_name(i) for i in items}
    requests = [
        ("3 recent items, seen ones excluded", {"history": items[:3], "k": 5, "beam_width": 16,
                                                "exclude_history": True}),
        ("a longer history, wider beam", {"history": items[10:18], "k": 5, "beam_width": 64}),
        ("one item, two excluded", {"history": items[100:101], "k": 3, "exclude": items[200:202]}),
        ("raw SID tokens", {"history_tokens": [64, 130, 200, 70, 140, 210], "k": 3, "beam_width": 8}),
        ("a history longer than the model takes", {"history": items[:40], "k": 3, "beam_width": 16}),
        ("bad: unknown item id", {"history": [1], "k": 5}),
        ("bad: k wider than the beam", {"history": items[:2], "k": 50, "beam_width": 16}),
    ]
    shutil.rmtree(SERVER_DIR, ignore_errors=True)
    try:
        # The tiny model is fastest on one thread a worker, the more so on a busy machine.
        with TorchServe(MODEL_STORE, {NAME: mar.name}, workdir=SERVER_DIR, env={"OMP_NUM_THREADS": "1"}) as server:
            print(f"TorchServe ready in {time.perf_counter() - start:.1f} s: inference {server.inference_url}, "
                  f"metrics {server.metrics_url}/metrics, logs {server.log_dir}/")
            answers = []
            for title, body in requests:
                status, answer, _ = server.predict(NAME, body)
                answers.append(answer)
                show(title, body, status, answer, names)
            status, answer, _ = server.predict(NAME, b'{"history": [1000,', content_type="application/json")
            print(f"\n> POST /predictions/{NAME} (malformed JSON)\n< {status} {json.dumps(answer)}")
            custom = [line for line in server.metrics().splitlines()
                      if line.startswith(("xgr_requests_total", "xgr_rejected_requests_total", "xgr_batches_total"))]
            print("\nmetrics:\n  " + "\n  ".join(custom))
    except TorchServeError as err:
        print(f"TorchServe failed: {err}", file=sys.stderr)
        return 1
    local = RecService(model, name=NAME, engine="reference", max_beam_width=128)
    [reply], _ = local.handle([requests[0][1]])
    served, mine = answers[0]["items"], reply.body["items"]
    same = [i["item_id"] for i in served] == [i["item_id"] for i in mine] and all(
        abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(served, mine, strict=True))
    print(f"\nfirst served answer == the library's answer for the same request: {same}")
    print(f"TorchServe stopped; demo took {time.perf_counter() - start:.1f} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
