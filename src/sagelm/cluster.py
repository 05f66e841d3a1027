"""Judging a dataset on Ray Data (`sagelm judge --ray`): the same OUT.jsonl as a plain run, judged by a pool of actors.

    driver: read_pairs -> plan_rows -> resume keys vs OUT.jsonl   (one bit per planned judgment; bad rows written)
      -> Ray Dataset: one read task on the driver's node streams the pending tasks in blocks of --batch-size rows
      -> map_batches(_JudgeWorker, ActorPoolStrategy(size=--workers)): each actor holds one Judge (one GPU each
         where the cluster has GPUs), one engine call per block, records back as JSON lines
      -> driver: iter_batches -> JudgmentLog.write (flushed and synced per block), progress

The records, their resume keys and the error records are those of `sagelm judge --data` (the same Judge, the same
TaskKeys, the same planning), so a Ray run resumes a plain one and vice versa, and `sagelm eval` reads either.
Faults: Ray Data's actor pool restarts a dead actor (max_restarts=-1) and retries the blocks it held
(max_task_retries=-1); nothing reaches OUT.jsonl before a block is judged, so a block is written once. A killed
driver loses the blocks in flight; a rerun skips what OUT.jsonl holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sagelm.decoding import DecodingOptions
from sagelm.errors import SagelmError

logger = logging.getLogger(__name__)

LOCAL = "local"  # --ray with no address: start a Ray instance on this machine (ray.init(address="local"))
# The columns of a pending task: its Pair's fields, then the Task's own.
TASK_COLUMNS = ("id", "question", "audio_1", "audio_2", "row_aspect", "label", "reference", "aspect", "swapped")
RECORD_COLUMN = "record"  # what an actor gives back: one record as a JSON line per task
AUTH_MODE_VAR = "RAY_AUTH_MODE"  # Ray sends its cluster token to an explicit address only when this is "token"
CONNECT_TIMEOUT_S = 5.0  # to see that a head node's port answers at all
READ_CPUS = 0  # the read task parses text only: it must not hold a CPU that a judge actor waits for
RESOURCE_NAMES = {"num_gpus": "GPU", "num_cpus": "CPU"}  # an actor's reservation, as the log line says it
QUIET_LOGGERS = ("ray", "ray.data")  # Ray's INFO lines (execution plans, "finished in") on every run


class ClusterError(SagelmError):
    """A Ray setup that cannot judge: no Ray installed, no cluster at the address, no room for the workers."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: `address` "local" starts Ray here, "auto" or HOST:PORT joins a running cluster;
    `workers` judge actors (default: one per GPU in the cluster, else 1); `init` more ray.init arguments
    (num_cpus, object_store_memory, ...) for a local instance."""

    address: str = LOCAL
    workers: int | None = None
    init: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSummary:
    planned: int  # judgments the data asks for (bad rows included)
    skipped: int  # already in OUT.jsonl
    written: int  # records written by this run (bad rows included)
    errors: int  # of those, records with an error


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ClusterError(f"--ray needs Ray Data ({e.msg}); install it with: pip install 'sagelm[ray]'") from None
    return ray


def _register_aspects(model: str) -> None:
    """The new aspects of a trained judge in a local folder, in this process (driver, read task or actor)."""
    from sagelm.aspects import load_aspects

    if Path(model).expanduser().is_dir():
        load_aspects(Path(model).expanduser())


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


# -- the pending tasks, streamed into Ray ---------------------------------------------------------------------------
def _task_row(task: Any) -> dict[str, Any]:
    p = task.pair
    return {"id": p.id, "question": p.question, "audio_1": p.audio_1, "audio_2": p.audio_2, "row_aspect": p.aspect,
            "label": p.label, "reference": p.reference, "aspect": task.aspect, "swapped": task.swapped}  # fmt: skip


def _row_task(row: dict[str, Any]) -> Any:
    from sagelm.data import Pair
    from sagelm.judge import Task

    pair = Pair(id=row["id"], question=row["question"], audio_1=row["audio_1"], audio_2=row["audio_2"],
                aspect=row["row_aspect"], label=row["label"], reference=row["reference"])  # fmt: skip
    return Task(pair, row["aspect"], bool(row["swapped"]))


def _block(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    schema = pa.schema([(c, pa.bool_() if c == "swapped" else pa.string()) for c in TASK_COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)


@dataclass(frozen=True)
class PendingPlan:
    """What the driver worked out: which of the planned judgments of `data` are still to be made (one bit each,
    in plan order) and the file's size and modification time when it was read."""

    data: str
    cwd: str  # relative audio paths resolve against the data file's folder, then this (the driver's) folder
    aspects: tuple[str, ...] | None
    both_orders: bool
    model: str
    todo: bytes  # np.packbits of one bool per planned task (bad rows are not tasks)
    n_tasks: int
    stamp: tuple[int, int]

    def tasks(self) -> Iterator[Any]:
        """The pending tasks, read again from the data file exactly as the driver read it."""
        from sagelm.data import BadRow, DataError, read_pairs
        from sagelm.judge import plan_rows

        todo = np.unpackbits(np.frombuffer(self.todo, dtype=np.uint8), count=self.n_tasks).astype(bool)
        changed = DataError(f"{self.data}: the data file changed while it was being judged; run again to resume")
        with contextlib.chdir(self.cwd):
            _register_aspects(self.model)
            if _stamp(Path(self.data)) != self.stamp:
                raise changed
            i = 0
            for item in plan_rows(read_pairs(self.data), list(self.aspects) if self.aspects else None,
                                  self.both_orders):  # fmt: skip
                if isinstance(item, BadRow):
                    continue
                if i >= self.n_tasks:
                    raise changed
                if todo[i]:
                    yield item
                i += 1
        if i != self.n_tasks:
            raise changed


def _datasource(plan: PendingPlan, block_rows: int) -> Any:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class PendingTasksDatasource(Datasource):
        """One read task, on the driver's node (where the data file and its relative paths are)."""

        @property
        def supports_distributed_reads(self) -> bool:
            return False

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:  # fmt: skip
            def read() -> Iterator[Any]:
                rows: list[dict[str, Any]] = []
                for task in plan.tasks():
                    rows.append(_task_row(task))
                    if len(rows) == block_rows:
                        yield _block(rows)
                        rows = []
                if rows:
                    yield _block(rows)

            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=[plan.data], exec_stats=None)
            return [ReadTask(read, meta)]

    return PendingTasksDatasource()


# -- the actors -----------------------------------------------------------------------------------------------------
class _JudgeWorker:
    """A Ray Data actor: one Judge, loaded once; each call judges one block of tasks in one engine call."""

    def __init__(self, model: str, options: DecodingOptions, backend: str, settings: dict[str, Any],
                 fingerprint: str):  # fmt: skip
        from sagelm.judge import Judge, TaskKeys

        _register_aspects(model)
        keys = TaskKeys(model, options, backend)
        keys.model_name = fingerprint  # the driver's: a copy of a local model on another node has other mtimes
        self.judge = Judge.from_pretrained(model, options, keys=keys, backend=backend, **settings)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        records = self.judge.judge_chunk([_row_task(r) for r in batch.to_pylist()])
        return pa.table({RECORD_COLUMN: [r.to_json() for r in records]})


# -- the driver -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _session(ray: Any, opts: RayOptions) -> Iterator[None]:
    """Ray, started here (`local`) or joined (`auto`, HOST:PORT, ray://...), for the run; let go of after it."""
    if ray.is_initialized():  # a caller's own Ray session (a notebook, a test): use it and leave it be
        yield
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if opts.address not in (LOCAL, "auto") and not opts.address.startswith("ray://"):
        _check_reachable(opts.address)
    try:
        if opts.address == LOCAL:
            ray.init(address=LOCAL, include_dashboard=False, log_to_driver=False, **opts.init)
        else:
            ray.init(address=opts.address, log_to_driver=False)
    except ConnectionError as e:
        hint = "" if os.environ.get(AUTH_MODE_VAR, "").lower() == "token" else (
            f"; if it uses token authentication (Ray's default), set {AUTH_MODE_VAR}=token and give its token "
            "(RAY_AUTH_TOKEN or ~/.ray/auth_token)")  # fmt: skip
        raise ClusterError(f"--ray {opts.address}: cannot join the Ray cluster there ({str(e).splitlines()[0]})"
                           f"{hint}") from None  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is one line now, not minutes of Ray retrying to reach its GCS."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address}: not an address (give HOST:PORT, auto, or nothing for a local Ray)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ClusterError(f"--ray {address}: no Ray cluster there ({e.strerror or e})") from None


def _resources(ray: Any, opts: RayOptions, settings: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """How many actors, and what each reserves: one GPU (or --tensor-parallel-size GPUs) where the cluster has
    GPUs, else one CPU."""
    have = ray.cluster_resources()
    gpus, cpus = int(have.get("GPU", 0)), int(have.get("CPU", 0))
    per_gpu = int(settings.get("tensor_parallel_size") or 1)
    workers = opts.workers or max(1, gpus // per_gpu)
    if gpus:
        need, unit, each = workers * per_gpu, "GPU", {"num_gpus": float(per_gpu), "num_cpus": 1.0}
        room = gpus
    else:
        need, unit, each, room = workers, "CPU", {"num_cpus": 1.0}, cpus
    if need > room:
        where = "this machine" if opts.address == LOCAL else f"the cluster at {opts.address}"
        raise ClusterError(f"--workers {workers}: {where} has {room} {unit}(s) for judge actors, "
                           f"{need} needed; pass --workers {max(1, room // (per_gpu if gpus else 1))} or add nodes")
    return workers, each


def _cause(e: BaseException) -> SagelmError | None:
    """The sagelm error (a model that cannot load, a data file that changed) inside Ray's wrappers, if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, SagelmError):
            return x
        stack += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def judge_dataset(
    data: str | Path,
    output: str | Path,
    model: str,
    options: DecodingOptions = DecodingOptions(),
    aspects: Sequence[str] | None = None,
    both_orders: bool = False,
    batch_size: int = 1,
    backend: str = "hf",
    settings: dict[str, Any] | None = None,
    cluster: RayOptions = RayOptions(),
    progress: Callable[[], Any] | None = None,
) -> RunSummary:
    """Judge the rows of `data` not yet in `output` on Ray, appending their records to `output`.

    `progress` makes a context manager with rich's Progress interface (add_task, advance), as the CLI's."""
    from sagelm.arena import _progress_none
    from sagelm.data import BadRow, read_pairs
    from sagelm.judge import TaskKeys, error_record, plan_rows
    from sagelm.records import JudgmentLog, refuse_output_over_data

    ray = _import_ray()
    data, output = Path(data), Path(output)
    settings = settings or {}
    _register_aspects(model)
    refuse_output_over_data(output, data)
    stamp = _stamp(data) if data.is_file() else (0, 0)
    log = JudgmentLog(output)
    with log:
        log.warn_if_mixed(model, backend)
        # Pass 1 (driver): the plain run's planning and keys; bad rows written now, one bit per task.
        keys = TaskKeys(model, options, backend)
        todo = bytearray()
        planned = written = errors = 0
        for item in plan_rows(read_pairs(data), aspects, both_orders):
            planned += 1
            if isinstance(item, BadRow):
                record = error_record(item, model, options, backend)
                if log.to_do(record.key, bad_row=True):
                    log.write([record])
                    logger.warning("%s", item.error)
                    written += 1
                    errors += 1
                continue
            todo.append(log.to_do(keys(item)))
        left = sum(todo)
        skipped = planned - written - left
        if skipped:
            logger.info("%s: %d judgments already done, %d to go", output, skipped, written + left)
        if left:
            plan = PendingPlan(str(data), os.getcwd(), tuple(aspects) if aspects else None, both_orders, model,
                               np.packbits(np.frombuffer(bytes(todo), dtype=np.uint8)).tobytes(), len(todo),
                               stamp)  # fmt: skip
            with _session(ray, cluster), (progress or _progress_none)() as bar_owner:
                workers, each = _resources(ray, cluster, settings)
                logger.info("Ray: %d judge actor(s), each with %s", workers,
                            ", ".join(f"{v:g} {RESOURCE_NAMES[k]}" for k, v in each.items()))  # fmt: skip
                bar = bar_owner.add_task("judging on Ray", total=left)
                for records in _judged_blocks(ray, plan, keys.model_name, options, batch_size, backend, settings,
                                              workers, each):  # fmt: skip
                    log.write(records)
                    written += len(records)
                    errors += sum(r.error is not None for r in records)
                    bar_owner.advance(bar, len(records))
    logger.info("%s: wrote %d records (%d with errors)", output, written, errors)
    return RunSummary(planned, skipped, written, errors)


def _judged_blocks(ray: Any, plan: PendingPlan, fingerprint: str, options: DecodingOptions, batch_size: int,
                   backend: str, settings: dict[str, Any], workers: int, each: dict[str, float]) -> Iterator[list[Any]]:
    """The records of `plan`'s pending tasks, a block at a time, as the actors finish them."""  # fmt: skip
    from ray.data import ActorPoolStrategy, DataContext

    from sagelm.records import Judgment

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is on stderr already
    ctx.print_on_execution_start = False
    ds = ray.data.read_datasource(_datasource(plan, batch_size), num_cpus=READ_CPUS).map_batches(
        _JudgeWorker,
        fn_constructor_kwargs={"model": plan.model, "options": options, "backend": backend, "settings": settings,
                               "fingerprint": fingerprint},  # fmt: skip
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=workers),
        **each,
    )
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield [Judgment.model_validate_json(line) for line in block[RECORD_COLUMN].to_pylist()]
    except Exception as e:
        cause = _cause(e)
        if cause is not None:
            raise cause from None
        raise
