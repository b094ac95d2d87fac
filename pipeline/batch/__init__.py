"""Many cases: the mesh job over a manifest of CTs, on a dask.distributed cluster.

- ``manifest``: the manifest (CSV or TOML) read into cases, every row checked
  before anything runs;
- ``task``: one case on a worker (the ``mesh`` job into ``<out>/<case_id>/``,
  skipped when current under ``--resume``), returning its record;
- ``engine``: the cluster (a LocalCluster, or an existing scheduler), one
  task per case, retries after a worker dies, progress;
- ``summary``: batch.csv, batch.json and the self-contained batch.html;
- ``bench``: ``make bench-batch``, wall time and speed-up with 1, 2, ... workers.
"""

from .engine import BatchResult, Progress, connect, default_workers, run_batch
from .manifest import Case, read_manifest
from .summary import counts, write_summary
from .task import CURRENT, DONE, FAILED, NOT_RUN, finished_while_stopping, process_case

__all__ = ["BatchResult", "Progress", "connect", "default_workers", "run_batch", "Case", "read_manifest", "counts",
           "write_summary", "CURRENT", "DONE", "FAILED", "NOT_RUN", "finished_while_stopping", "process_case"]
