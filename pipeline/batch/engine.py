"""The batch on a dask.distributed cluster: cases as independent tasks, worker deaths retried.

:func:`connect` gives a client: a ``LocalCluster`` of worker processes
sized from the machine, or an existing scheduler. :func:`run_batch` submits
one task per case (:func:`~pipeline.batch.task.process_case`), collects the
records as they finish and reports progress. A case that fails records its
error inside its task, so the other cases go on. A worker that dies while
running a case (out of memory, killed) makes the scheduler report the case
as ``KilledWorker``; the case is then submitted again, up to ``retries``
times, and after that recorded as failed with the reason.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import PipelineError
from ..io import remove_staging
from .manifest import Case
from .task import CURRENT, DONE, FAILED, NOT_RUN, process_case

# One case needs up to about this much memory (a 512 x 512 x 300 CT peaks at
# 1.4 GB, see README "Batch"); the default number of local workers keeps at
# least this much per worker.
CASE_MEMORY_GB = 4.0
GB = 1e9
# Task keys: KEY_PREFIX-<batch token>-<manifest row index>-<attempt>.
KEY_PREFIX = "pipeline-case"
# How often progress is refreshed while no case finishes (s).
TICK_S = 1.0
# How long to wait for a worker to join a scheduler given with --scheduler (s).
WORKER_WAIT_S = 30.0


@dataclass(frozen=True)
class Progress:
    total: int
    done: int
    failed: int
    current: int         # up to date (resume)
    running: int
    eta_s: float | None  # None until a case has run
    finished: dict | None = None   # the record that just finished; None on a tick
    note: str | None = None        # e.g. a retry after a worker died


@dataclass(frozen=True)
class BatchResult:
    records: list[dict]  # in manifest order
    interrupted: bool
    seconds: float


def default_workers(cpus: int, memory_bytes: float) -> int:
    """One worker per core, as far as memory allows ``CASE_MEMORY_GB`` each."""
    return max(1, min(cpus, int(memory_bytes // (CASE_MEMORY_GB * GB))))


@contextmanager
def connect(scheduler: str | None = None, *, workers: int | None = None, worker_memory_gb: float | None = None,
            cases: int | None = None) -> Iterator["object"]:
    """A dask client: to ``scheduler`` if given, else to a new LocalCluster of
    ``workers`` processes (one thread each) with ``worker_memory_gb`` each
    (defaults: :func:`default_workers`, the machine's memory shared evenly),
    and no more processes than ``cases``: a worker with no case to run only
    takes its share of the memory and a second to start."""
    import dask
    from distributed import Client, LocalCluster
    from dask.system import CPU_COUNT
    from distributed.system import MEMORY_LIMIT

    if scheduler is not None:
        if workers is not None or worker_memory_gb is not None:
            raise PipelineError("--workers and --worker-memory-gb size the local cluster; with --scheduler "
                                "the cluster's own workers run the cases")
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as e:
            raise PipelineError(f"--scheduler {scheduler}: cannot connect ({' '.join(str(e).split())})") from None
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            client.close()
            raise PipelineError(f"--scheduler {scheduler}: no worker joined within {WORKER_WAIT_S:.0f} s "
                                "(start `dask worker` processes)") from None
        with client:
            yield client
        return
    if worker_memory_gb and worker_memory_gb * GB > MEMORY_LIMIT:
        raise PipelineError(f"--worker-memory-gb {worker_memory_gb:g} is more than this machine's "
                            f"{MEMORY_LIMIT / GB:.3g} GB")
    n = workers or default_workers(CPU_COUNT, MEMORY_LIMIT)
    n = min(n, cases) if cases else n
    memory = worker_memory_gb * GB if worker_memory_gb else MEMORY_LIMIT / n
    # A worker death reaches run_batch at once (it counts the retries), and
    # the cluster's own logging stays off the terminal (the batch reports it).
    # Worker processes start with Ctrl-C ignored (they inherit it): on a
    # terminal it reaches the whole process group, and only this process
    # handles it, by stopping the batch and the cluster.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=int(memory),
                                   dashboard_address=None, silence_logs=logging.CRITICAL)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    with cluster, Client(cluster) as client:
        yield client


def run_batch(cases: Sequence[Case], out_dir: str | Path, client, *, resume: bool = False, retries: int = 1,
              qa: bool = True, on_update: Callable[[Progress], None] | None = None) -> BatchResult:
    """Run every case on ``client``'s cluster into ``out_dir/<case_id>/``.

    Returns the records in manifest order. A KeyboardInterrupt (or one
    raised by ``on_update``) cancels what has not finished: those cases are
    recorded as not run and the result says ``interrupted``.
    """
    from distributed import wait
    from distributed.client import FIRST_COMPLETED

    out_dir = str(Path(out_dir).resolve())
    token = uuid.uuid4().hex[:8]
    start = time.perf_counter()
    records: dict[str, dict] = {}
    attempts: dict[str, int] = {}
    pending: dict = {}   # future -> case

    order = {case.case_id: n for n, case in enumerate(cases)}

    def submit(case: Case) -> None:
        attempts[case.case_id] = attempts.get(case.case_id, 0) + 1
        # One key prefix for all cases: the scheduler then treats them as one group, queued in priority order.
        key = f"{KEY_PREFIX}-{token}-{order[case.case_id]:06d}-{attempts[case.case_id]}"
        # Manifest order (higher runs first); a retried case goes before all that wait.
        priority = len(cases) * (attempts[case.case_id] - 1) + len(cases) - order[case.case_id]
        future = client.submit(process_case, case, out_dir, resume=resume, qa=qa, key=key, pure=False,
                               priority=priority)
        pending[future] = case

    def update(finished: dict | None = None, note: str | None = None) -> None:
        if on_update is None:
            return
        statuses = [r["status"] for r in records.values()]
        ran = statuses.count(DONE) + statuses.count(FAILED)
        remaining = len(cases) - len(records)
        elapsed = time.perf_counter() - start
        eta = elapsed / ran * remaining if ran else None
        on_update(Progress(total=len(cases), done=statuses.count(DONE), failed=statuses.count(FAILED),
                           current=statuses.count(CURRENT), running=_running(client, pending), eta_s=eta,
                           finished=finished, note=note))

    interrupted = False
    try:
        for case in cases:
            submit(case)
        update()
        while pending:
            try:
                finished, _ = wait(list(pending), timeout=TICK_S, return_when=FIRST_COMPLETED)
            except TimeoutError:
                update()
                continue
            for future in finished:
                case = pending.pop(future)
                record, note = _outcome(future, case, attempts[case.case_id], retries, out_dir)
                if record is None:
                    submit(case)
                    update(note=note)
                    continue
                record["attempts"] = attempts[case.case_id]
                records[case.case_id] = record
                update(finished=record)
    except KeyboardInterrupt:
        interrupted = True
        client.cancel(list(pending))
    for case in cases:
        if case.case_id not in records:
            records[case.case_id] = {"case_id": case.case_id, "status": NOT_RUN,
                                     "attempts": attempts.get(case.case_id, 0),
                                     "error": "the batch was interrupted before this case finished"}
    return BatchResult(records=[records[c.case_id] for c in cases], interrupted=interrupted,
                       seconds=round(time.perf_counter() - start, 3))


def _outcome(future, case: Case, attempt: int, retries: int, out_dir: str) -> tuple[dict | None, str | None]:
    """The finished future's record; (None, note) when the case is to run again."""
    from distributed import KilledWorker

    if future.status == "finished":
        return future.result(), None
    if future.status == "cancelled":
        return _failed(case, "cancelled by the scheduler (a worker or the scheduler was restarted)"), None
    error = future.exception()
    if isinstance(error, KilledWorker):
        limit = error.last_worker.memory_limit
        why = f"killed, or beyond its {limit / GB:.3g} GB memory limit" if limit else "killed"
        if attempt <= retries:
            return None, (f"case {case.case_id}: the worker died while running it ({why}); "
                          f"retry {attempt} of {retries}")
        # The dead worker may have been writing: no staging folder stays behind.
        remove_staging(Path(out_dir) / case.case_id)
        return _failed(case, f"the worker running this case died {attempt} time(s) ({why})"), None
    return _failed(case, f"unexpected {type(error).__name__}: {' '.join(str(error).split())}"), None


def _failed(case: Case, error: str) -> dict:
    return {"case_id": case.case_id, "status": FAILED, "error": error}


def _running(client, pending: dict) -> int:
    """How many of our cases a worker is running now."""
    ours = {f.key for f in pending}
    try:
        processing = client.processing()
    except OSError:
        return 0
    return sum(1 for keys in processing.values() for k in keys if k in ours)
