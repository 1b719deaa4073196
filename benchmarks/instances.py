"""Instance labelling of a 1 GiB volume in bounded memory; prints one JSON object.

    python benchmarks/instances.py            # 1 GiB uint16 volume (32 x 4096 x 4096)
    python benchmarks/instances.py --small    # 64 MiB (32 x 1024 x 1024), for a quick look
    python benchmarks/instances.py --split    # also split touching objects (much slower)

The input is the bundled real nuclei volume tiled to size. To measure the labelling rather
than a neural network, the model is a fixed per-pixel threshold (a callable), so the run is:
stream the volume, write labels and probabilities to a zarr store, then label objects chunk by
chunk. Each run happens in a fresh child process; peak RSS is the kernel's high-water mark
for that process, and the same run on a volume 4x smaller gives the growth ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from engine import peak_rss_mb, write_volume


def threshold(x, prompts):
    """Logits of 'brighter than 9000 after a 7x7 mean' (nuclei ~10k-30k, background ~3k)."""
    from torch.nn import functional as F

    smooth = F.avg_pool2d(x[:, :1], 7, stride=1, padding=3, count_include_pad=False)
    return (smooth - 9000.0).repeat(1, len(prompts), 1, 1) / 500.0


def child(src: str, out: str, split: bool) -> dict:
    from napari_llmseg.api import iter_segment

    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    gen = iter_segment(src, "nuclei", model=threshold, roi_size=256, batch_size=4, out=out,
                       instances=True, split=split, min_size=200, report=False)  # fmt: skip
    last = "segment"
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if step.stage != last:
            stages[last] = time.perf_counter() - t0
            last = step.stage
    stages[last] = time.perf_counter() - t0
    return {
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "objects": int(result.metadata["objects"]["count"]),
        "removed_below_min_size": int(result.metadata["objects"]["removed"]),
        "seconds_at_end_of_stage": {k: round(v, 1) for k, v in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--split", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.child[2] == "1")))
        return
    # The quarter-size volume still spans a whole source chunk (8 planes) in depth, so that
    # both runs read the same bands and only the volume's size differs.
    big = (32, 1024, 1024) if args.small else (32, 4096, 4096)
    quarter = (big[0] // 4, big[1], big[2])
    report: dict = {
        "split": args.split,
        "model": "per-pixel threshold (callable)",
        "chunks": [1, 256, 256],
    }
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for name, shape in (("quarter", quarter), ("full", big)):
            write_volume(t / f"{name}.zarr", shape, (8, 512, 512))
            src, dst = str(t / f"{name}.zarr"), str(t / f"{name}-out.zarr")
            out = subprocess.run(
                [sys.executable, __file__, "--child", src, dst, "1" if args.split else "0"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            report[name] = {"shape": list(shape), "bytes": int(np.prod(shape)) * 2,
                            **json.loads(out.stdout.strip().splitlines()[-1])}  # fmt: skip
    report["rss_growth_4x"] = round(
        report["full"]["peak_rss_mb"] / report["quarter"]["peak_rss_mb"], 3
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
