"""Running the engine on Dask's distributed scheduler, with the same output.

Work is split by output chunk: a task owns a set of output chunks (a group of planes of a
volume, or a band of chunk rows of a 2D image) and runs the ordinary streaming engine with
every other chunk marked as done. The engine then feeds the model exactly the batches the
single-process run would have fed it that touch the task's chunks, and blends the windows of
each chunk in the same order, so the result is bit-identical to a single-process run with the
same torch thread count. No two tasks write the same chunk, and a chunk is marked done in the
store only after its data, so a task that dies is simply run again (Dask retries it) and a
killed run resumes like any other.

The model is loaded once per worker process and kept; the prompts are encoded once, on the
client, and shipped to the workers with the intensity statistics.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .engine.stream import Progress, RunInfo

#: Worker-process cache of loaded models, keyed by (model spec, device).
_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


@dataclass
class TaskSpec:
    """Everything a worker needs to run its share (picklable)."""

    channel_axis: int | None
    device: str
    prompts: list[str]
    encoded: Any  # prompt encodings computed on the client (backends only)
    stats: dict | None
    plan: Any  # WindowPlan, with the blend mode and sigma_scale of the weights
    batch_size: int
    threshold: float
    out: str
    run_id: str
    bands: Any = None  # band selection of a (Geo)TIFF path, opened again on each worker
    cval: float | None = None  # pad value (None: the model's own)
    output_key: Any = None  # which output of a callable returning several
    classes: Any = None  # output channels of each prompt, for a model with named classes
    class_names: Any = None  # {channel: name} of such a model


#: Dask's nanny exports this (65536) to its workers, which makes glibc map and zero every
#: large temporary array afresh; our local clusters drop it (figures: docs/benchmarks.md,
#: "Distributed"; advice for other clusters: docs/scaling.md).
TRIM = "MALLOC_TRIM_THRESHOLD_"
#: One malloc arena per worker: tasks run on an executor thread whose own arena would give
#: its emptied heaps back to the kernel after every batch (docs/benchmarks.md).
ARENAS = "MALLOC_ARENA_MAX"
#: Dask configuration our own local clusters start with: the malloc settings above, no
#: statistical profiler (it samples every thread for a dashboard nobody starts) and event-loop
#: ticks every 500 ms instead of 20/100 ms, so that they preempt the model threads less
#: (docs/benchmarks.md measures each).
WORKER_CONFIG = {
    f"distributed.nanny.pre-spawn-environ.{TRIM}": None,
    f"distributed.nanny.pre-spawn-environ.{ARENAS}": 1,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.worker.memory.monitor-interval": "500ms",
}


def local_cluster(n_workers: int) -> Any:
    """A LocalCluster of ``n_workers`` single-threaded processes, as ``scheduler='local:N'``
    and ``--workers N`` make it."""
    import dask

    from distributed import LocalCluster

    # A Dask cluster started earlier in this process leaves its nanny's setting in our own
    # environment, where new workers would inherit it: hide Dask's value while ours spawn.
    default = str(dask.config.get("distributed.nanny.pre-spawn-environ", {}).get(TRIM, ""))
    leaked = os.environ.get(TRIM)
    if leaked is not None and leaked == default:
        del os.environ[TRIM]
    try:
        with dask.config.set(WORKER_CONFIG):
            return LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
    finally:
        if leaked is not None:
            os.environ[TRIM] = leaked


def parse_scheduler(scheduler: Any) -> tuple[Any, bool]:
    """-> (distributed.Client, whether we created it and must close it)."""
    try:
        from distributed import Client
    except ModuleNotFoundError:  # pragma: no cover - distributed is in the [all] extra
        raise ModuleNotFoundError(
            "scheduler= needs the 'distributed' package: pip install napari-llmseg[distributed]"
        ) from None
    if isinstance(scheduler, Client):
        return scheduler, False
    if isinstance(scheduler, str) and scheduler.startswith("local:"):
        try:
            n = int(scheduler.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"scheduler {scheduler!r}: expected 'local:N' with N >= 1 workers")
        return Client(local_cluster(n)), True
    if isinstance(scheduler, str) and "://" in scheduler:
        try:
            return Client(scheduler, timeout="20s"), True
        except OSError as err:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler!r}: {err}") from None
    raise ValueError(
        f"scheduler must be 'local:N', a scheduler address such as 'tcp://host:8786', or a "
        f"distributed.Client; got {scheduler!r}"
    )


def task_regions(plan: Any, n_workers: int, group: int = 1) -> list[tuple[slice, ...]]:
    """Partition the output chunk grid into task regions along its first axis.

    For a volume run plane by plane the first axis is the planes, which share no windows;
    for a 2D image it is the rows of chunks (windows on a band border are predicted by both
    tasks). About four tasks per worker keep every worker busy to the end.

    ``group`` is the number of planes the engine batches together (its window order
    interleaves the planes of a group): a task boundary inside a group would make both tasks
    predict nearly every batch of that group, so regions hold whole groups.
    """
    grid = plan.grid
    per = max(1, math.ceil(grid[0] / max(4 * n_workers, 1)))
    if plan.n_lead == 1 and group > 1:  # lead-axis output chunks are one plane each
        per = math.ceil(per / group) * group
    rest = tuple(slice(None) for _ in grid[1:])
    return [(slice(i, min(i + per, grid[0])), *rest) for i in range(0, grid[0], per)]


def _worker_model(model: Any, device: str) -> Any:
    """A backend object or callable as shipped, or a model name loaded once per worker."""
    if model is not None and not isinstance(model, (str, Path)):
        return model
    from .backends.registry import get_model

    device = _worker_device(device)
    key = (str(model), device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = get_model(model, device=device)
        return _MODELS[key]


def _preload(model: str | Path, device: str) -> None:
    """Load a model into this worker's cache (a task pinned to each worker)."""
    _worker_model(model, device)


def _worker_device(device: str) -> str:
    """'auto' on a worker: its own GPU (one per worker, by worker index), else the CPU."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            return "cuda:0"  # dask-cuda gives every worker its own visible device
        try:
            from distributed import get_worker

            name = str(get_worker().name)
            index = int(name.rsplit("-", 1)[-1]) if name.rsplit("-", 1)[-1].isdigit() else 0
        except (ValueError, ImportError):
            index = 0
        return f"cuda:{index % torch.cuda.device_count()}"
    return "cpu"


#: Seconds between a worker's progress reports and between its looks at the cancel event.
#: Each is a message to the scheduler, which a LocalCluster runs in the client's process:
#: sent once per batch, they took CPU from the workers on a small machine.
REPORT_INTERVAL = 0.5


class _DistributedEvent:
    """threading.Event-like view of a distributed.Event, asked at most every REPORT_INTERVAL."""

    def __init__(self, name: str) -> None:
        from distributed import Event

        self.event = Event(name)
        self._checked = -math.inf
        self._set = False

    def is_set(self) -> bool:
        now = time.monotonic()
        if not self._set and now - self._checked >= REPORT_INTERVAL:
            self._set = bool(self.event.is_set())
            self._checked = now
        return self._set


def run_task(spec: TaskSpec, region: tuple[slice, ...], image: Any, model: Any) -> dict:
    """Run the engine for the output chunks in ``region`` of the chunk grid (on a worker).

    ``image`` is a path or an array, ``model`` a name/folder, a backend or a callable.
    """
    import torch
    import zarr

    from distributed import Queue, get_worker

    from .engine.normalize import IntensityStats
    from .engine.predictor import make_predictor
    from .engine.store import OutputStore
    from .engine.stream import drain, run
    from .io.open import open_image

    torch.set_num_threads(max(1, int(get_worker().state.nthreads)))
    source = open_image(image, channel_axis=spec.channel_axis, bands=spec.bands)
    store = OutputStore(zarr.open_group(spec.out, mode="r+"))
    done = np.ones(spec.plan.grid, dtype=bool)
    done[region] = store.done_grid()[region]  # everything outside the task counts as done
    stats = IntensityStats.from_dict(spec.stats) if spec.stats is not None else None
    predictor = make_predictor(
        _worker_model(model, spec.device), spec.prompts, stats=stats,
        n_channels=source.n_channels, encoded=spec.encoded, cval=spec.cval,
        output_key=spec.output_key, classes=spec.classes, class_names=spec.class_names,
    )  # fmt: skip
    progress = Queue(f"{spec.run_id}-progress")
    reported = [0, time.monotonic()]  # windows reported, when

    def report(step: Progress) -> None:
        if step.done > reported[0] and time.monotonic() - reported[1] >= REPORT_INTERVAL:
            progress.put(step.done - reported[0])
            reported[:] = [step.done, time.monotonic()]

    info = drain(
        run(
            source, predictor, spec.plan, store,
            weights=spec.plan.weights(), batch_size=spec.batch_size,
            threshold=spec.threshold, done=done, cancel=_DistributedEvent(f"{spec.run_id}-cancel"),
        ),
        report,
    )  # fmt: skip
    if info.windows > reported[0]:
        progress.put(info.windows - reported[0])
    return {"windows": info.windows, "chunks": info.chunks_written, "cancelled": info.cancelled}


def _prepare_worker(image: Any, out: str) -> str | None:
    """Runs on every worker before any task: can it read the input and write the output?

    It also imports torch first thing, on the worker's event loop: a task's arguments (torch
    tensors) unpickled there while the task thread imports torch could fail with
    ``KeyError: 'torch'`` and cut the worker off (docs/benchmarks.md, "Distributed").
    """
    import torch  # noqa: F401

    for path in [image] if isinstance(image, (str, os.PathLike)) else list(image or []):
        if not Path(path).exists():
            return f"input '{path}' does not exist on this worker"
    if not Path(out).is_dir():
        return f"output store '{out}' is not reachable from this worker"
    if not os.access(out, os.W_OK):
        return f"output store '{out}' is not writable from this worker"
    return None


def run_distributed(
    client: Any,
    spec: TaskSpec,
    image: Any,
    model: Any,
    done: np.ndarray | None,
    cancel: threading.Event | None,
    source: Any,
) -> Generator[Progress, None, RunInfo]:
    """Run every task on the cluster; yields aggregated progress, returns a RunInfo."""
    from distributed import Event, Queue

    from .engine.stream import batches_to_run, plane_group

    t0 = time.perf_counter()
    paths = image if isinstance(image, (str, list)) else None  # a path, or band files
    problems = client.run(_prepare_worker, paths, spec.out)
    bad = {w: p for w, p in problems.items() if p}
    if bad:
        worker, problem = next(iter(bad.items()))
        raise ValueError(f"worker {worker}: {problem}; every worker must see the same paths")
    workers = list(client.scheduler_info().get("workers", {}))
    n_workers = max(1, len(workers))
    plan = spec.plan
    group = plane_group(source, plan, len(spec.prompts))
    order = plan.order(group)
    regions = task_regions(plan, n_workers, group)
    prior = done if done is not None else np.zeros(plan.grid, dtype=bool)
    totals = []
    for region in regions:
        mask = np.ones(plan.grid, dtype=bool)
        mask[region] = prior[region]
        totals.append(sum(len(b) for b in batches_to_run(plan, order, spec.batch_size, mask)))
    work = [(r, n) for r, n in zip(regions, totals, strict=True) if n]
    info = RunInfo(total=sum(n for _, n in work))
    cancel_event = Event(f"{spec.run_id}-cancel", client=client)
    progress = Queue(f"{spec.run_id}-progress", client=client)
    # A model given by name or folder (None: the default) is loaded on every worker at once,
    # first thing, rather than by the first task each worker runs.
    preload = []
    if model is None or isinstance(model, (str, Path)):
        preload = [
            client.submit(_preload, model, spec.device, workers=[w], pure=False) for w in workers
        ]
    futures = [
        client.submit(run_task, spec, r, image, model, pure=False, retries=3) for r, _ in work
    ]

    all_done = threading.Event()  # lets the polling loop below stop waiting at once

    def wake_when_all_done(_: Any) -> None:  # on the client's event loop thread
        if all(f.done() for f in futures):
            all_done.set()

    for fut in futures:
        fut.add_done_callback(wake_when_all_done)

    def drain() -> int:
        moved = progress.get(batch=True)
        return int(sum(moved)) if moved else 0

    yield Progress(0, info.total)
    try:
        while True:
            if cancel is not None and cancel.is_set() and not info.cancelled:
                info.cancelled = True
                cancel_event.set()  # running tasks stop after their current batch
                client.cancel([f for f in futures if f.status == "pending"])
            for fut in (*preload, *futures):
                if fut.status == "error":
                    fut.result()  # re-raises the worker's exception here
            moved = drain()
            if moved:
                info.windows += moved
                yield Progress(info.windows, info.total)
            if all(f.done() for f in futures):
                break
            if not moved:  # pause, but no longer than until the last task ends
                all_done.wait(REPORT_INTERVAL / 4)
        moved = drain()
        if moved:
            info.windows += moved
            yield Progress(info.windows, info.total)
        for fut in futures:
            if fut.status == "finished":
                result = fut.result()
                info.chunks_written += result["chunks"]
                info.cancelled |= bool(result["cancelled"])
    finally:
        unfinished = [f for f in (*preload, *futures) if not f.done()]
        if unfinished:
            cancel_event.set()
            client.cancel(unfinished)
    info.seconds = time.perf_counter() - t0
    return info


def run_on_cluster(
    run: Any, predictor: Any, stats: Any, store: Any, done: np.ndarray | None, cancel: Any
) -> Generator[Progress, None, RunInfo]:
    """Hand a planned run (:class:`napari_llmseg.api.RunPlan`) to Dask workers.

    Paths are opened by each worker; arrays, callables and backend objects travel once per
    worker (scatter); a model named by registry name or folder is loaded on every worker.
    """
    import uuid

    client, owned = parse_scheduler(run.options.scheduler)
    try:
        source, model = run.source, run.options.model
        if source.paths:  # one file, or a stack of band files: every worker opens them
            image_arg: Any = (
                str(source.path) if source.path is not None else [str(p) for p in source.paths]
            )
            axis = run.options.channel_axis
        else:
            image_arg = client.scatter(source.array, broadcast=True)
            axis = source.channel_axis
        if model is None or isinstance(model, (str, Path)):
            model_arg: Any = None if model is None else str(model)
        else:
            model_arg = client.scatter(run.model, broadcast=True)
        spec = TaskSpec(
            channel_axis=axis,
            device=str(run.device),
            prompts=run.prompts,
            encoded=getattr(predictor, "encoded", None),
            stats=stats.to_dict() if stats is not None else None,
            plan=run.plan,
            batch_size=run.options.batch_size,
            threshold=run.options.threshold,
            out=str(store.path),
            run_id=f"llmseg-{uuid.uuid4().hex}",
            bands=run.options.bands if source.paths else None,
            cval=run.options.cval,
            output_key=run.options.output_key,
            classes=run.classes,
            class_names=run.class_names,
        )
        return (
            yield from run_distributed(client, spec, image_arg, model_arg, done, cancel, source)
        )
    finally:
        if owned:
            client.close()
            if client.cluster is not None:
                client.cluster.close()
