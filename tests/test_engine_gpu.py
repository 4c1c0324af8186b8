"""On a CUDA GPU: the compiled, graph-replayed engine == the reference, and it never recompiles."""

from contextlib import closing

import pytest
import torch
from torch._dynamo.utils import counters

from xgr_toolkit import ServeConfig
from xgr_toolkit.engine import GREngine
from xgr_toolkit.engines import ReferenceEngine

from engine_cases import assert_same_items, random_case

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

COMPILED = ServeConfig(device="cuda", prompt_buckets=[8, 40], max_batch=4, compile=True, cuda_graphs=True)


def _on_cuda(model):
    model.decoder.cuda()
    return model


@pytest.mark.parametrize("serve", [COMPILED, ServeConfig(device="cuda", prompt_buckets=[40], max_batch=4)],
                         ids=["compiled+graphs", "eager"])
@pytest.mark.parametrize("seed", range(4))
def test_gpu_engine_float32_equals_reference(seed, serve):
    model, requests = random_case(seed, serve, requests=9)
    expected = ReferenceEngine(model).recommend(requests)
    with closing(GREngine(_on_cuda(model))) as engine:
        engine.warmup()
        assert_same_items(expected, engine.recommend(requests))


def test_no_recompiles_or_skipped_graphs_after_warmup():
    model, requests = random_case(5, COMPILED, requests=16)
    with closing(GREngine(_on_cuda(model))) as engine:
        engine.warmup()
        graphs, skips = counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]
        for size in (1, 2, 3, 4, 7, 16):  # every batch bucket, both prompt buckets, overlapped launches
            engine.recommend(requests[:size])
        [f.result(timeout=60) for f in [engine.submit(r) for r in requests]]
    assert counters["stats"]["unique_graphs"] == graphs, "a bucket recompiled after warm-up"
    assert counters["inductor"]["cudagraph_skips"] == skips == 0
