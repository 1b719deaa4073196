"""Throughput on Dask's distributed scheduler: 2 workers against 1; prints one JSON object.

    python benchmarks/dask_scaling.py [--planes 16] [--size 1024]

Both runs use a LocalCluster of single-threaded worker processes (torch limited to one thread
per worker), the embedded llmseg-tiny model loaded by name on every worker, and the same zarr
volume (the bundled nuclei volume, tiled). Each cluster is warmed up first (worker start,
model load) on a separate small run, so the timed run measures segmentation only. The ratio
`speedup_2_over_1` is throughput with 2 workers over throughput with 1, measured in the same
process one after the other; on a 2-core machine it is bounded by 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from engine import write_volume


def timed_run(n_workers: int, src: Path, warm: Path, out: Path) -> dict:
    from distributed import Client, LocalCluster
    from napari_llmseg import segment

    cluster = LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    try:
        segment(warm, "nuclei", out=out.with_name(out.name + "-warm"), scheduler=client)
        t0 = time.perf_counter()
        res = segment(src, "nuclei", out=out, scheduler=client)
        seconds = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    return {
        "workers": n_workers,
        "windows": res.info.windows,
        "seconds": round(seconds, 2),
        "windows_per_second": round(res.info.windows / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--planes", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        shape = (args.planes, args.size, args.size)
        write_volume(t / "in.zarr", shape, (4, 512, 512))
        write_volume(t / "warm.zarr", (2, 256, 256), (2, 256, 256))
        one = timed_run(1, t / "in.zarr", t / "warm.zarr", t / "o1.zarr")
        two = timed_run(2, t / "in.zarr", t / "warm.zarr", t / "o2.zarr")
    report = {
        "volume": list(shape),
        "model": "llmseg-tiny",
        "one_worker": one,
        "two_workers": two,
        "speedup_2_over_1": round(two["windows_per_second"] / one["windows_per_second"], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
