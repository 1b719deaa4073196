"""Throughput on Dask's distributed scheduler: 2 workers against 1; prints one JSON object.

    python benchmarks/dask_scaling.py [--planes 32] [--size 1024] [--repeats 5] [--chunks N]
                                      [--dask-malloc] [--arenas N] [--dask-intervals]
                                      [--both-alive]

Both clusters are LocalClusters of single-threaded worker processes (torch limited to one
thread per worker), made exactly as `scheduler="local:N"` makes them, with the embedded
llmseg-tiny model loaded by name on every worker; the input is one zarr volume (the bundled
nuclei volume, tiled). Timed runs on 1 and 2 workers alternate `--repeats` times so that
noise from other jobs on the machine hits both. Each is made on a cluster started for it,
warmed up on a run of 8 planes (worker start, model load, first batches on every worker: a
run's fixed costs, not its throughput) and closed after it, so only the measured cluster
runs; `--both-alive` keeps both clusters up throughout, as this benchmark did before
2026-11-30 (the idle cluster's heartbeats then take CPU from the measured one).

`speedup_2_over_1` is the median over the pairs of (time with 1 worker / time with 2) for
the same volume, i.e. the throughput ratio; on a 2-core machine it is bounded by 2.
`windows` counts the windows the workers predicted: equal in both runs when no task repeats
another's work. Worker CPU seconds are summed over the workers of each run. `--chunks` sets
the output chunk edge (default: the engine's). For comparison (docs/scaling.md):
`--dask-malloc` keeps Dask's MALLOC_TRIM_THRESHOLD_ setting in the workers; `--arenas N`
gives them MALLOC_ARENA_MAX=N instead of our 1 (0: unset, glibc's default of 8 per core);
`--dask-intervals` keeps Dask's 20 ms event-loop tick and 100 ms memory monitor.

(Not named benchmarks/distributed.py: Python puts a script's folder first on sys.path, so a
script of that name would import itself instead of Dask's `distributed` package.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
from engine import write_volume


def worker_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of the calling worker process so far."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.user, t.system


#: Intervals our local clusters change from Dask's defaults (--dask-intervals keeps Dask's)
INTERVALS = ("distributed.admin.tick.interval", "distributed.worker.memory.monitor-interval")


def start_cluster(
    n_workers: int, dask_malloc: bool, arenas: int | None, dask_intervals: bool
) -> Any:
    import dask

    from distributed import Client, LocalCluster
    from napari_llmseg.distributed import ARENAS, WORKER_CONFIG, local_cluster

    changes: dict[str, Any] = {}
    if arenas is not None:  # another MALLOC_ARENA_MAX (0: none)
        changes[f"distributed.nanny.pre-spawn-environ.{ARENAS}"] = arenas or None
    if dask_intervals:  # Dask's own values (our WORKER_CONFIG is set only around clusters)
        changes.update({key: dask.config.get(key) for key in INTERVALS})
    if changes:  # local_cluster with these changes
        with mock.patch.dict(WORKER_CONFIG, changes):
            return Client(local_cluster(n_workers))
    if dask_malloc:  # Dask's own worker environment (MALLOC_TRIM_THRESHOLD_=65536)
        key = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
        with dask.config.set({key: 65536}):
            cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
    else:
        cluster = local_cluster(n_workers)  # exactly what scheduler="local:N" / --workers N make
    return Client(cluster)


def timed_run(client: Any, src: Path, out: Path, chunks: int | None) -> dict:
    from napari_llmseg import segment

    before = client.run(worker_cpu)
    t0 = time.perf_counter()
    res = segment(src, "nuclei", out=out, scheduler=client, chunks=chunks, report=False)
    seconds = time.perf_counter() - t0
    after = client.run(worker_cpu)
    return {
        "windows": res.info.windows,
        "seconds": round(seconds, 2),
        "worker_user_seconds": round(sum(after[w][0] - before[w][0] for w in after), 1),
        "worker_system_seconds": round(sum(after[w][1] - before[w][1] for w in after), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--planes", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=None, help="output chunk edge")
    parser.add_argument(
        "--arenas", type=int, default=None, help="MALLOC_ARENA_MAX for the workers (0: unset)"
    )
    parser.add_argument(
        "--dask-malloc",
        action="store_true",
        help="keep Dask's MALLOC_TRIM_THRESHOLD_ in the workers (for comparison)",
    )
    parser.add_argument(
        "--dask-intervals",
        action="store_true",
        help="Dask's default tick and memory-monitor intervals in the clusters (for comparison)",
    )
    parser.add_argument(
        "--both-alive",
        action="store_true",
        help="keep both clusters running throughout (the idle one's heartbeats included)",
    )
    args = parser.parse_args()
    from napari_llmseg import segment

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        shape = (args.planes, args.size, args.size)
        write_volume(t / "in.zarr", shape, (4, 512, 512))
        write_volume(t / "warm.zarr", (8, 512, 512), (1, 512, 512))
        runs: dict[int, list[dict]] = {1: [], 2: []}
        clients: dict[int, Any] = {}

        def client_for(n: int, k: int) -> Any:
            if n not in clients:
                clients[n] = start_cluster(n, args.dask_malloc, args.arenas, args.dask_intervals)
                # worker start-up, model load and first batches: not timed
                warm = t / f"warm{n}-{k}.zarr"
                segment(t / "warm.zarr", "nuclei", out=warm, scheduler=clients[n])
            return clients[n]

        def close(n: int) -> None:
            client = clients.pop(n)
            cluster = client.cluster
            client.close()
            cluster.close()

        try:
            for k in range(args.repeats):  # 1 and 2 workers alternate, so noise hits both
                for n in (1, 2):
                    client = client_for(n, k)
                    out = t / f"o{n}-{k}.zarr"
                    runs[n].append(timed_run(client, t / "in.zarr", out, args.chunks))
                    if not args.both_alive:  # only the cluster being measured runs
                        close(n)
        finally:
            for n in list(clients):
                close(n)
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs[1], runs[2], strict=True)]
    report = {
        "volume": list(shape),
        "model": "llmseg-tiny",
        "chunks": args.chunks or "engine default",
        "worker_malloc": "dask default" if args.dask_malloc else "glibc default",
        "worker_malloc_arenas": 1 if args.arenas is None else (args.arenas or "glibc default"),
        "clusters": "both alive" if args.both_alive else "one at a time",
        "dask_intervals": "dask default" if args.dask_intervals else "ours (500 ms)",
        "one_worker": runs[1],
        "two_workers": runs[2],
        "speedup_each_pair": [round(r, 3) for r in ratios],
        # the same volume in every run: the ratio of wall times is the throughput ratio
        "speedup_2_over_1": round(statistics.median(ratios), 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
