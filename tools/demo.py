"""`make demo`: a tiny model trained on planted structure, packaged as a .mar and served by a real
TorchServe on loopback.

The data is synthetic with a rule to learn: 240 items on 20 shelves of 12 ("teapot no. 1" to
"teapot no. 12", ...), each item with a random SID, and 800 users who each browse one shelf in order
(no. 12 is followed by no. 1). ``build/demo-model`` is a 2-layer, hidden-64 decoder trained on it with
the library's own trainer (a few seconds on a CPU); it learns to recommend the next item on the shelf.
The script packages ``model_store/demo.mar`` (what `xgr package build/demo-model --name demo` does),
starts TorchServe on 127.0.0.1 with free ports, sends a few requests (some bad, to show the 4xx),
prints the recommendations, checks one answer against the library, and stops the server.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from xgr_toolkit import ItemCatalog, load_model_dir
from xgr_toolkit.data import leave_one_out
from xgr_toolkit.request import sid_tokens
from xgr_toolkit.serving import PackageOptions, RecService, TorchServe, TorchServeError, package_model, save_item_names
from xgr_toolkit.synthetic import random_catalog
from xgr_toolkit.training import TrainConfig, gr_model_config, train_model_dir

MODEL_DIR, MODEL_STORE, SERVER_DIR = Path("build/demo-model"), Path("model_store"), Path("build/demo-torchserve")
NAME = "demo"
SHELVES = ("kettle", "lamp", "notebook", "scarf", "teapot", "backpack", "candle", "mug", "blanket", "clock",
           "sneakers", "headphones", "umbrella", "wallet", "cushion", "planter", "journal", "poster", "radio", "vase")
SHELF_SIZE, USERS, WALK, MAX_HISTORY = 12, 800, 8, 5
FIRST_ID = 1000


def item_id(shelf: int, position: int) -> int:
    """The item at ``position`` (0-based, taken round the shelf) of shelf ``shelf``."""
    return FIRST_ID + shelf * SHELF_SIZE + position % SHELF_SIZE


def item_name(item: int) -> str:
    shelf, position = divmod(item - FIRST_ID, SHELF_SIZE)
    return f"{SHELVES[shelf]} no. {position + 1}"


def shelf_walks(seed: int = 0) -> dict[int, list[int]]:
    """user -> the items of one shelf in order, from a random start: the rule the model learns."""
    rng = random.Random(seed)
    walks = {}
    for user in range(1, USERS + 1):
        shelf, start = rng.randrange(len(SHELVES)), rng.randrange(SHELF_SIZE)
        walks[user] = [item_id(shelf, start + k) for k in range(WALK)]
    return walks


def build() -> Path:
    items = len(SHELVES) * SHELF_SIZE
    catalog = ItemCatalog(torch.arange(FIRST_ID, FIRST_ID + items), random_catalog(items, 3, 64, seed=0).codes, 64)
    model_cfg = gr_model_config(catalog, layers=2, hidden=64, heads=4, kv_heads=2, mlp=128, max_history=MAX_HISTORY,
                                name="demo-shelves")
    torch.set_num_threads(1)  # the tiny model trains fastest on one thread, the more so on a busy machine
    train_model_dir(MODEL_DIR, leave_one_out(shelf_walks()), catalog, model_cfg,
                    TrainConfig(epochs=4, batch_size=128, lr=5e-3, warmup_steps=20), MAX_HISTORY)
    save_item_names(MODEL_DIR, {i: item_name(i) for i in catalog.item_ids.tolist()})
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
    print(f"trained {MODEL_DIR}/ on {USERS} users' shelf walks and packaged {mar} "
          f"({mar.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    model = load_model_dir(MODEL_DIR)
    names = {i: item_name(i) for i in model.catalog.item_ids.tolist()}
    teapots = [item_id(SHELVES.index("teapot"), k) for k in range(SHELF_SIZE)]
    lamps = [item_id(SHELVES.index("lamp"), k) for k in range(SHELF_SIZE)]
    two_mugs = model.catalog.sids_of_items(torch.tensor([item_id(SHELVES.index("mug"), k) for k in (2, 3)]))
    requests = [
        ("three teapots in a row, seen ones excluded", {"history": teapots[3:6], "k": 5, "beam_width": 16,
                                                        "exclude_history": True}),
        ("round the end of the lamp shelf, wider beam", {"history": lamps[8:] + lamps[:2], "k": 3, "beam_width": 64}),
        ("one teapot, the next two excluded", {"history": teapots[:1], "k": 3, "exclude": teapots[1:3]}),
        ("raw SID tokens (mug no. 3, mug no. 4)", {"history_tokens": sid_tokens(model.config.model, two_mugs)
                                                   .flatten().tolist(), "k": 3, "beam_width": 8}),
        ("a history longer than the model takes", {"history": teapots * 2, "k": 3, "beam_width": 16}),
        ("bad: unknown item id", {"history": [1], "k": 5}),
        ("bad: k wider than the beam", {"history": teapots[:2], "k": 50, "beam_width": 16}),
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
