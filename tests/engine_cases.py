"""Random models, catalogs and requests shared by the engine tests (CPU and GPU)."""

from __future__ import annotations

import copy
import dataclasses
import random

import torch

from xgr_toolkit import BeamConfig, ModelConfig, ServeConfig, XGRConfig, build_request
from xgr_toolkit.model_dir import GRModel
from xgr_toolkit.synthetic import random_catalog, random_decoder


def random_case(seed: int, serve: ServeConfig | None = None, requests: int = 7, beam_width: int = 16):
    """A random model (L = 3 or 4, C = 16) with collisions, and requests mixing widths, k, exclusions
    and both normalisations; small catalogs (fewer valid items than beams) on every third seed."""
    rng = random.Random(seed)
    cfg = ModelConfig(num_layers=2, levels=3 + seed % 2, codes=16, sid_offset=10, max_prompt_tokens=40)
    catalog = random_catalog(40 if seed % 3 == 0 else 400, cfg.levels, cfg.codes, seed, collisions=10)
    config = XGRConfig(model=cfg, beam=BeamConfig(beam_width=beam_width, top_k=beam_width),
                       serve=serve or ServeConfig(prompt_buckets=[8, 40], max_batch=4))
    model = GRModel(config, random_decoder(cfg, seed), catalog)
    ids = catalog.item_ids.tolist()
    batch = []
    for _ in range(requests):
        width = rng.choice([beam_width // 4, beam_width // 2, beam_width])
        batch.append(build_request(cfg, catalog, history_items=rng.sample(ids, rng.randint(1, 15)),
                                   beam_width=width, top_k=rng.randint(1, width), max_beam_width=beam_width,
                                   exclude_items=rng.sample(ids, rng.randint(0, 30)),
                                   normalize=rng.choice(["vocab", "level"])))
    return model, batch


def float8_case(seed: int, serve: ServeConfig, requests: int = 8, width: int = 16):
    """A random model (weights std 0.25) in float32 for the reference and bf16 for the engine, and requests
    returning every beam (k = W), so that agreement counts W items a request."""
    model, _ = random_case(seed, serve, beam_width=width)
    model = dataclasses.replace(model, decoder=random_decoder(model.config.model, seed, std=0.25))
    cfg, catalog, rng = model.config.model, model.catalog, random.Random(seed)
    ids = catalog.item_ids.tolist()
    batch = [build_request(cfg, catalog, history_items=rng.sample(ids, rng.randint(1, 15)), beam_width=width,
                           top_k=width, max_beam_width=width) for _ in range(requests)]
    return model, dataclasses.replace(model, decoder=copy.deepcopy(model.decoder).to(torch.bfloat16)), batch


def top_k_agreement(want, got) -> float:
    """Share of the reference's items that the engine also returns, averaged over requests."""
    shared = [len({i.item_id for i in a} & {i.item_id for i in b}) / len(a) for a, b in zip(want, got)]
    return sum(shared) / len(shared)


def assert_same_items(expected, got, tolerance: float = 1e-5) -> None:
    """The same items in the same order, scores within ``tolerance``."""
    assert len(expected) == len(got)
    for want, have in zip(expected, got):
        assert [i.item_id for i in have] == [i.item_id for i in want]
        assert [i.sid for i in have] == [i.sid for i in want]
        assert max((abs(a.score - b.score) for a, b in zip(want, have)), default=0.0) <= tolerance
