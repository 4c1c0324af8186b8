"""TorchServe handler for xgr_toolkit models: a thin shell around :class:`xgr_toolkit.serving.RecService`.

TorchServe instantiates the one class defined here (a second class, even an exception, makes the worker
crash-loop), so every helper lives in the installed ``xgr_toolkit`` package. The archive holds the model
directory's files (``config.yaml``, ``model.safetensors``, ``catalog.safetensors``, optional
``item_names.json``) and a ``model-config.yaml`` whose ``handler`` section says::

    handler:
      engine: reference        # a name in xgr_toolkit.engines.ENGINES
      max_beam_width: 128      # the widest beam a request may ask for; the default beam
      linear_precision: dtype  # config.yaml's serve.linear_precision, recorded by `xgr package`
      compile_cache: ...       # optional: the `xgr export` artifact shipped in the archive (xgr_toolkit.compile_cache),
                               # refused where it was compiled for another linear_precision
      compile: true            # optional: overrides config.yaml's serve.compile (set with compile_cache)
      dtype: ...               # optional: overrides config.yaml's serve.dtype

Bad input never raises out of ``handle``: its request gets a 4xx with ``{"error", "field"}`` and the rest
of the batch is answered. The request and response schema: ``docs/serving.md``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from xgr_toolkit.compile_cache import use_compile_cache
from xgr_toolkit.serving.service import RecService

log = logging.getLogger(__name__)

JSON = "application/json"
PHRASES = {400: "Bad Request", 500: "Internal Server Error"}


class XGRHandler:
    """initialize: load the archive's model directory, build the engine, warm it up; handle: one batch."""

    def __init__(self):
        self.service: RecService | None = None
        self.initialized = False

    def initialize(self, context) -> None:
        props = context.system_properties
        options = dict((context.model_yaml_config or {}).get("handler") or {})
        gpu = props.get("gpu_id")
        # TorchServe assigns the GPU (round robin over number_of_gpu); without one, the CPU.
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # share the cores among the workers
            workers = int((context.model_yaml_config or {}).get("maxWorkers", 1))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))
        if options.get("compile_cache"):  # shipped by `xgr package --compile-cache`; used before anything compiles
            try:
                used = use_compile_cache(Path(props["model_dir"]) / str(options["compile_cache"]), device,
                                         options.get("linear_precision"))
                log.info("xgr model %s: compile cache %s", context.model_name, used)
            except Exception as err:  # a cache only saves time: without it the warm-up compiles
                log.warning("xgr model %s: compile cache not used, the warm-up compiles: %s: %s", context.model_name,
                            type(err).__name__, err)
        try:  # the archive's files are checked before use: an error names the file and the problem
            self.service = RecService.from_model_dir(props["model_dir"], name=context.model_name,
                                                     engine=str(options.get("engine", "reference")),
                                                     max_beam_width=int(options.get("max_beam_width", 128)),
                                                     device=device, dtype=options.get("dtype"),
                                                     compile=options.get("compile"))
        except Exception as err:  # one clear line in model_log.log before TorchServe's traceback
            log.error("xgr model %s: cannot load the archive: %s: %s", context.model_name, type(err).__name__, err)
            raise
        warm_ms = self.service.warm_up()
        log.info("xgr model %s: engine %s on %s, max beam width %d, warm-up %.1f ms", context.model_name,
                 self.service.engine_name, device, self.service.max_beam_width, warm_ms)
        self.initialized = True

    def handle(self, data: list, context) -> list[str]:
        # A raw POST arrives as {"body": ...}, a form upload as {"data": ...}: bytes, text or parsed JSON.
        # Anything else (say, a request envelope's output) is taken as the request itself.
        bodies = [row.get("body", row.get("data")) if isinstance(row, dict) and ("body" in row or "data" in row)
                  else row for row in data]
        replies, stats = self.service.handle(bodies)
        # One reply per HTTP request; a request envelope (TorchServe's service_envelope) would break that,
        # so statuses are only set for requests that exist. docs/serving.md: leave the envelope off.
        http_requests = len(context.request_ids) if getattr(context, "request_ids", None) else len(replies)
        out = []
        for i, reply in enumerate(replies):
            if i < http_requests:
                context.set_response_content_type(i, JSON)
                if reply.status != 200:
                    context.set_response_status(reply.status, PHRASES.get(reply.status, "Error"), idx=i)
            out.append(json.dumps(reply.body))
        try:
            self._report(context, stats)
        except Exception:  # metrics are never worth a failed batch
            log.exception("could not report metrics")
        return out

    def _report(self, context, stats) -> None:
        metrics = context.metrics
        if metrics is None:
            return

        def add(name: str, value: float, unit: str, kind: MetricTypes) -> None:
            dims = [Dimension("ModelName", context.model_name), Dimension("Level", "Model")]
            metrics.add_metric(name, value, unit, dimensions=dims, metric_type=kind)

        # Seconds, so that Prometheus' default histogram buckets (5 ms .. 10 s) fit.
        for stage in ("parse", "engine", "format"):
            add(f"xgr_{stage}_seconds", getattr(stats, f"{stage}_ms") / 1e3, "s", MetricTypes.HISTOGRAM)
        add("xgr_batch_size", stats.batch_size, "count", MetricTypes.GAUGE)  # of the last batch
        if stats.beam_widths:
            add("xgr_beam_width", max(stats.beam_widths), "count", MetricTypes.GAUGE)  # widest of the last batch
        add("xgr_batches_total", 1, "count", MetricTypes.COUNTER)  # requests / batches = mean batch size
        add("xgr_requests_total", stats.batch_size, "count", MetricTypes.COUNTER)
        add("xgr_rejected_requests_total", stats.rejected, "count", MetricTypes.COUNTER)
        add("xgr_failed_requests_total", stats.failed, "count", MetricTypes.COUNTER)
        for name, value in stats.prefix_cache.items():  # the engine's prompt store, where it has one
            if name in ("bytes_held", "hit_ratio"):
                add(f"xgr_prefix_cache_{name}", value, "B" if name == "bytes_held" else "", MetricTypes.GAUGE)
            else:
                add(f"xgr_prefix_cache_{name}_total", value, "count", MetricTypes.COUNTER)
