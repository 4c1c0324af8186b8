"""GREngine: batches of requests through the xGR beam search, eager or compiled and graph-replayed.

Buckets: a batch of R requests is padded to the next batch bucket (powers of two up to
``serve.max_batch``) and its prompts to the next prompt bucket, so that the compiled layers and the
CUDA graphs see a fixed set of shapes, all built by :meth:`GREngine.warmup`. With CUDA graphs, the
whole search of a bucket (prefill, L steps, final ordering) is one graph replay.

Overlap: :meth:`launch` prepares a batch on the host (pinned memory), queues its copy, search and
copy-back on the GPU and returns at once; :meth:`LaunchedBatch.result` waits for it. The scheduler
launches batch i+1 one launch's host time before batch i should end (each graph's replay time is
measured at capture), so the GPU does not wait for the host, and collects batch i meanwhile.
"""

from __future__ import annotations

import atexit
import functools
import gc
import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from ..config import ServeConfig
from ..model_dir import GRModel
from ..modules import GRDecoder
from ..request import RecRequest, ScoredItem
from .batch import BeamBatch, make_batch, to_items
from .beam_search import BeamSearch
from .catalog_index import CatalogIndex
from .kv_cache import BeamKVCache
from .precision import apply_linear_precision
from .prompt_store import BlockPlan, PromptStore
from .scheduler import BatchScheduler

__all__ = ["GREngine", "LaunchedBatch"]

# Warm-up freezes the garbage collector (below); at exit objects are ordinary again, since extension
# modules check for leaks then.
atexit.register(gc.unfreeze)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    batch: BeamBatch  # static inputs
    blocks: BlockPlan | None  # static inputs where the prompt store is on
    scores: torch.Tensor  # static outputs [R, W]
    sid_index: torch.Tensor
    seconds: float  # GPU time of one replay, measured at capture


@dataclass
class LaunchedBatch:
    """A batch on its way through the GPU; ``result()`` waits for it and maps SIDs to items."""

    engine: GREngine
    requests: list[RecRequest]
    scores: torch.Tensor  # [R, W] host (pinned) once ``done`` has fired
    sid_index: torch.Tensor
    done: torch.cuda.Event | None
    expected_done: float = math.inf  # time.perf_counter() when the GPU should finish it; inf: unknown
    release: Callable[[], None] | None = None  # gives back the prompt store's blocks the batch holds

    def ready(self) -> bool:
        return self.done is None or self.done.query()

    def result(self) -> list[list[ScoredItem]]:
        if self.done is not None:
            self.done.synchronize()
        if self.release is not None:
            self.release()
            self.release = None
        n = len(self.requests)
        return to_items(self.requests, self.engine.model.catalog, self.scores[:n], self.sid_index[:n])


def _buckets_up_to(limit: int) -> list[int]:
    return sorted({min(1 << i, limit) for i in range(limit.bit_length() + 1)})


class GREngine:
    """The fast engine. Returns exactly what :class:`~xgr_toolkit.engines.ReferenceEngine` returns."""

    def __init__(self, model: GRModel, serve: ServeConfig | None = None, beam_width: int | None = None):
        self.model, self.serve = model, serve or model.config.serve
        cfg = model.config.model
        self.beam_width = beam_width or model.config.beam.beam_width
        self.batch_buckets = _buckets_up_to(self.serve.max_batch)
        self.prompt_buckets = sorted({min(b, cfg.max_prompt_tokens) for b in self.serve.prompt_buckets}
                                     | {cfg.max_prompt_tokens})
        param = next(model.decoder.parameters())
        self.device = param.device
        self.cuda = self.device.type == "cuda"
        decoder = model.decoder.sharing_weights()  # the model's own decoder stays as it is
        decoder.fuse_projections()
        # the linear layers in serve.linear_precision (float8: quantized after fusing, so qkv is one product)
        self.float8_layers = apply_linear_precision(decoder, self.serve)
        cache = BeamKVCache()
        cache.setup(cfg.num_layers, self.batch_buckets[-1], self.prompt_buckets[-1], self.beam_width, cfg.levels,
                    cfg.num_kv_heads, cfg.head_dim, param.dtype, self.device)
        # one store per engine (per TorchServe worker), allocated whole now: its memory is known at start
        self.store = PromptStore(self.serve.prefix_cache_bytes, self.serve.prefix_cache_block, self.prompt_buckets,
                                 cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, param.dtype, self.device) \
            if self.serve.prefix_cache_bytes else None
        if self.serve.compile:
            self._compile(decoder)
        self.search = BeamSearch(decoder, CatalogIndex(model.catalog, self.device), cache, self.beam_width,
                                 shared_prompt_kv=self.serve.shared_prompt_kv,
                                 masked_sorter=self.serve.masked_sorter, compile=self.serve.compile)
        self._graphs: dict[tuple[int, int, int], _Graph] = {}  # (R, P, S)
        self._busy_until = 0.0  # time.perf_counter() when the GPU should finish what was launched
        self.launch_seconds = 0.0  # host time of one launch (moving average): how early to prepare the next
        self._graph_pool = torch.cuda.graph_pool_handle() if self.serve.cuda_graphs else None
        self._scheduler: BatchScheduler | None = None

    def _compile(self, decoder: GRDecoder) -> None:
        """Regionally compile the engine's decoder. One compiled graph per (block, token shape): prefill
        [R, P], decode [R*W, 1] and, with the prompt store, a suffix's prefill [R, S] (its k and v written
        outside the region); the head's log-probabilities one per (batch bucket, level)."""
        cfg = self.model.config.model
        suffixes = len(self.serve.prefix_cache_suffixes or self.prompt_buckets)
        shapes = len(self.batch_buckets) * max(len(self.prompt_buckets) + suffixes + 1, cfg.levels)
        # layers whose linear layers differ in precision (serve.float8_skip naming some) compile apart: a handoff
        # region is one graph per (its layer's kind, the following layer's kind)
        kinds = len({tuple(n.split(".", 2)[2] for n in self.float8_layers if n.startswith(f"layers.{i}."))
                     for i in range(cfg.num_layers)})
        # A region's code is shared by every engine of the process, and an engine of another dtype, precision or
        # model shape (the benchmark's float8 beside bf16, tests) adds graphs of its own to it: past the limit a
        # fullgraph compile raises, so each engine raises the limit by what it may add.
        torch._dynamo.config.recompile_limit += 2 * shapes * kinds**2
        decoder.compile_layers(dynamic=False)

    def _search(self, batch: BeamBatch, blocks: BlockPlan | None = None,
                suffix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (scores [R, W], sid_index [R, W]), best first. With the prompt store: its blocks copied in
        and only ``suffix`` positions a row prefilled where suffix < P, the prompts' new blocks saved."""
        search = self.search
        reuse = blocks is not None and suffix < batch.tokens.shape[1]
        if reuse:
            self.store.load(search.cache, blocks.read)
        last = search.prefill(batch, blocks.start if reuse else None, suffix)
        if blocks is not None:
            self.store.save(search.cache, blocks.write)
        state = search.first_step(last, batch)
        for t in range(1, self.model.config.model.levels):
            state = search.decode_step(t, state, batch)
        return search.finish(state)

    def bucket(self, requests: int, prompt_len: int) -> tuple[int, int]:
        return (next(b for b in self.batch_buckets if b >= requests),
                next(b for b in self.prompt_buckets if b >= prompt_len))

    def suffix_buckets(self, prompt_bucket: int) -> list[int]:
        """The prefill lengths S a batch of prompt bucket P may run: P, and with the prompt store each smaller
        one of ``serve.prefix_cache_suffixes`` (default: the prompt buckets); a batch takes the smallest that
        covers the uncached rest of each of its prompts."""
        if self.store is None:
            return [prompt_bucket]
        return sorted({s for s in self.serve.prefix_cache_suffixes or self.prompt_buckets if s < prompt_bucket}
                      | {prompt_bucket})

    # ---- warm-up: compile every bucket, capture every graph ------------------------------------
    def warmup(self) -> None:
        """Compile (and capture) every (batch, prompt, suffix) bucket, so that serving never compiles."""
        for R in self.batch_buckets:
            for P in self.prompt_buckets:
                for S in self.suffix_buckets(P):
                    batch = make_batch([], self.model.catalog, P, self.serve.max_exclusions, slots=R).to(self.device)
                    blocks = self.store.empty_plan(R, P).to(self.device) if self.store else None
                    if self.serve.cuda_graphs:
                        self._capture(R, P, S, batch, blocks)
                    else:
                        with torch.no_grad():
                            self._search(batch, blocks, S)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        # Compilation leaves about half a million Python objects; a full collection walks them all
        # (275 ms on the CI CPU; 0.5-0.6 s stalls were seen in the H100 benchmark's open-loop P99).
        # Frozen, they are never walked again: serving pauses only for objects made after warm-up.
        gc.collect()
        gc.freeze()

    @torch.no_grad()
    def _capture(self, R: int, P: int, S: int, batch: BeamBatch, blocks: BlockPlan | None) -> _Graph:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # compile and autotune outside the capture
            for _ in range(2):
                self._search(batch, blocks, S)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            scores, sid_index = self._search(batch, blocks, S)
        times = []
        for _ in range(3):  # the replay's GPU time lets the scheduler launch the next batch just in time
            start = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - start)
        self._graphs[R, P, S] = _Graph(graph, batch, blocks, scores, sid_index, sorted(times)[1])
        return self._graphs[R, P, S]

    def capacity_rps(self, prompt_len: int) -> float:
        """Requests a second the GPU finishes with full batches back to back (the captured graph's replay
        time of the largest batch bucket; with the prompt store, of its shortest suffix: every request a
        hit): the ceiling of any load."""
        R, P = self.bucket(self.batch_buckets[-1], prompt_len)
        return R / self._graphs[R, P, self.suffix_buckets(P)[0]].seconds

    def prefix_cache_stats(self) -> dict[str, float]:
        """The prompt store's counters (:meth:`PromptStore.stats`); empty where the store is off."""
        return self.store.stats() if self.store else {}

    # ---- serving -------------------------------------------------------------------------------
    @torch.no_grad()
    def launch(self, requests: list[RecRequest]) -> LaunchedBatch:
        """Queue one batch (at most ``serve.max_batch`` requests) on the device; returns at once."""
        start = time.perf_counter()
        if not 1 <= len(requests) <= self.batch_buckets[-1]:
            raise ValueError(f"a batch holds 1..{self.batch_buckets[-1]} requests; got {len(requests)}")
        for r in requests:
            if r.beam_width > self.beam_width:
                raise ValueError(f"beam_width {r.beam_width} exceeds the engine's {self.beam_width} (built for "
                                 "GREngine(beam_width=...): the model's beam.beam_width, or `xgr package "
                                 "--beam-width` for an archive)")
        R, P = self.bucket(len(requests), max(len(r.prompt) for r in requests))
        padded = self.serve.cuda_graphs or self.serve.compile  # to the bucket warm-up compiled (and captured)
        host = make_batch(requests, self.model.catalog, P, self.serve.max_exclusions,
                          slots=R if padded else len(requests))
        if self.store is None:
            return self._launch(requests, host, R, P, P, None, start)
        suffix, blocks, lease = self.store.plan([r.prompt for r in requests], host.tokens.shape[0], P,
                                                self.suffix_buckets(P))
        try:
            launched = self._launch(requests, host, R, P, suffix, blocks, start)
        except BaseException:
            self.store.release(lease, written=False)
            raise
        if launched.done is None:  # run already (CPU)
            self.store.release(lease)
        else:
            launched.release = functools.partial(self.store.release, lease)
        return launched

    def _launch(self, requests: list[RecRequest], host: BeamBatch, R: int, P: int, S: int, blocks: BlockPlan | None,
                start: float) -> LaunchedBatch:
        if not self.cuda:
            scores, sid_index = self._search(host, blocks, S)
            return LaunchedBatch(self, requests, scores, sid_index, None)
        graph = self._graphs.get((R, P, S)) if self.serve.cuda_graphs else None
        if self.serve.cuda_graphs and graph is None:
            raise RuntimeError(f"bucket (R={R}, P={P}, S={S}) was not captured: call warmup() first")
        pinned = BeamBatch(*(t.pin_memory() for t in vars(host).values()))
        pinned_blocks = blocks.pin_memory() if blocks is not None else None
        expected_done = math.inf
        if graph is not None:
            inputs = [(graph.batch, pinned)] + ([(graph.blocks, pinned_blocks)] if blocks is not None else [])
            for static, src in inputs:
                for static_t, src_t in zip(vars(static).values(), vars(src).values()):
                    static_t.copy_(src_t, non_blocking=True)
            graph.graph.replay()
            scores, sid_index = graph.scores, graph.sid_index
            self._busy_until = expected_done = max(time.perf_counter(), self._busy_until) + graph.seconds
        else:
            device_blocks = pinned_blocks.to(self.device, non_blocking=True) if pinned_blocks is not None else None
            scores, sid_index = self._search(pinned.to(self.device, non_blocking=True), device_blocks, S)
        out = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
               for t in (scores, sid_index)]
        done = torch.cuda.Event()
        done.record()
        self.launch_seconds += 0.2 * (time.perf_counter() - start - self.launch_seconds)
        return LaunchedBatch(self, requests, *out, done, expected_done)

    def recommend(self, requests: list[RecRequest]) -> list[list[ScoredItem]]:
        """Synchronous: every request answered, in order; batches overlap as :meth:`launch` allows."""
        step = self.batch_buckets[-1]
        launched = [self.launch(requests[i:i + step]) for i in range(0, len(requests), step)]
        return [items for batch in launched for items in batch.result()]

    def submit(self, request: RecRequest) -> Future:
        """Asynchronous: the request joins the next batch of the background scheduler."""
        if self._scheduler is None:
            self._scheduler = BatchScheduler(self, self.batch_buckets[-1], self.serve.max_wait_ms, self.serve.overlap)
        return self._scheduler.submit(request)

    def close(self) -> None:
        """Answer what was submitted, stop the scheduler, and unfreeze the garbage collector.

        Warm-up froze every object alive, this engine's too; an engine in a reference cycle is then
        never freed, nor its device memory (the benchmark's baselines ran out of memory that way).
        Unfrozen, the next full collection frees it once it is dropped."""
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None
        gc.unfreeze()
