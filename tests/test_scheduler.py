"""BatchScheduler's timing policy, with a simulated GPU: the next batch is launched one launch's host
time before the running one should end, never earlier, and every request is answered with its own."""

import math
import time
from dataclasses import dataclass, field

import pytest

from xgr_toolkit.engine.scheduler import BatchScheduler

GPU_S = 0.6  # one simulated batch
LEAD_S = 0.2  # the simulated engine's launch_seconds


@dataclass
class SimulatedBatch:
    requests: list
    done_at: float
    expected_done: float

    def ready(self) -> bool:
        return time.perf_counter() >= self.done_at

    def result(self) -> list:
        time.sleep(max(0.0, self.done_at - time.perf_counter()))
        return [[f"answer to {r}"] for r in self.requests]


@dataclass
class SimulatedEngine:
    """Batches run one after another on a simulated GPU; ``predicts`` says whether launch knows when."""

    predicts: bool
    launch_seconds: float = LEAD_S
    launches: list = field(default_factory=list)  # (time.perf_counter() at launch, requests)
    busy_until: float = 0.0

    def launch(self, requests: list) -> SimulatedBatch:
        now = time.perf_counter()
        self.busy_until = max(now, self.busy_until) + GPU_S
        self.launches.append((now, list(requests)))
        return SimulatedBatch(list(requests), self.busy_until, self.busy_until if self.predicts else math.inf)


@pytest.mark.parametrize("predicts", [True, False], ids=["end-predicted", "end-unknown"])
def test_next_batch_launches_one_lead_before_the_running_batch_ends(predicts):
    engine = SimulatedEngine(predicts)
    scheduler = BatchScheduler(engine, max_batch=8, max_wait_ms=0.0)
    try:
        first = scheduler.submit("r0")
        time.sleep(0.1)  # r0 runs alone; r1 and r2 arrive while it does
        rest = [scheduler.submit(r) for r in ("r1", "r2")]
        answers = [f.result(timeout=10) for f in (first, *rest)]
    finally:
        scheduler.close()
    assert answers == [["answer to r0"], ["answer to r1"], ["answer to r2"]]
    (start0, batch0), (start1, batch1) = engine.launches
    assert batch0 == ["r0"] and batch1 == ["r1", "r2"]  # the two arrivals gathered into one batch
    end0 = start0 + GPU_S
    if predicts:  # launched ahead: in the last LEAD_S of the running batch (0.05 s of slack for the threads)
        assert end0 - LEAD_S - 0.01 <= start1 < end0 - 0.05
    else:  # no prediction: the old rule, launch when the running batch is done
        assert start1 >= end0
