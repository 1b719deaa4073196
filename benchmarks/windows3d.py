"""3D windows benchmark: memory on a volume of a few hundred MB, speed against MONAI.

    python benchmarks/windows3d.py            # about 5 minutes
    python benchmarks/windows3d.py --quick    # a smaller volume for the memory figures

The model is a small MONAI-style 3D network (``forward(x)``: two 3x3x3 convolutions, two
output channels), called with the batch only. Every memory figure is the peak resident set
size of a fresh child process during one run (``VmHWM`` reset before it), minus nothing: it
includes torch and the process's own baseline, reported separately.

Fields:
  memory_run         a float32 zarr volume segmented into a zarr store with 3D windows of 64^3:
    volume_mb          its size
    peak_rss_mb        peak RSS while segment() runs over it
    baseline_rss_mb    RSS of the child after imports and before the run
    monai_peak_rss_mb  MONAI's sliding_window_inference on the same volume held in memory
  half_depth         the same figures for a volume half as deep
  monai_time_ratio   wall time of segment() / MONAI on a (96, 256, 256) volume in memory,
                     same network, windows (64^3, overlap 0.25, gaussian), batch 4; median of
                     alternating pairs
  max_abs_diff_vs_monai   largest difference of the probabilities (sigmoid of MONAI's output)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROI, OVERLAP, BATCH = (64, 64, 64), 0.25, 4


def network():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, 2, 3, padding=1),
    )
    return net.eval()


def write_volume(path: Path, shape: tuple[int, int, int]) -> None:
    """A float32 zarr volume written 32 planes at a time (never held whole)."""
    import zarr

    rng = np.random.default_rng(0)
    z = zarr.create_array(path, shape=shape, chunks=(32, *shape[1:]), dtype=np.float32)
    for i in range(0, shape[0], 32):
        n = min(32, shape[0] - i)
        z[i : i + n] = rng.normal(size=(n, *shape[1:])).astype(np.float32)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(task: str, arg: str) -> dict:
    import torch

    from napari_llmseg import segment

    net = network()
    if task == "segment":
        src, out = arg.split("|")
        baseline = rss_mb("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        res = segment(src, ["a", "b"], model=net, roi_size=ROI, overlap=OVERLAP,
                      batch_size=BATCH, out=out)  # fmt: skip
        return {
            "peak_rss_mb": rss_mb("VmHWM"),
            "baseline_rss_mb": baseline,
            "seconds": time.perf_counter() - t0,
            "windows": res.info.windows,
        }
    if task == "monai":
        import zarr
        from monai.inferers import sliding_window_inference

        baseline = rss_mb("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        x = torch.from_numpy(np.asarray(zarr.open_array(arg, mode="r")[...]))[None, None]
        with torch.inference_mode():
            out = sliding_window_inference(x, ROI, BATCH, net, OVERLAP, mode="gaussian")
            torch.sigmoid_(out)
        return {
            "peak_rss_mb": rss_mb("VmHWM"),
            "baseline_rss_mb": baseline,
            "seconds": time.perf_counter() - t0,
        }
    raise ValueError(task)


def run_child(task: str, arg: str) -> dict:
    cmd = [sys.executable, __file__, "--child", task, arg]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timing(repeats: int) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from napari_llmseg import segment

    net = network()
    vol = np.random.default_rng(1).normal(size=(96, 256, 256)).astype(np.float32)
    kw = dict(roi_size=ROI, overlap=OVERLAP, batch_size=BATCH)
    segment(vol[:64, :64, :64], ["a", "b"], model=net, **kw)  # warm-up
    ours, theirs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = segment(vol, ["a", "b"], model=net, **kw)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ref = sliding_window_inference(
                torch.from_numpy(vol)[None, None], ROI, BATCH, net, OVERLAP, mode="gaussian"
            )
            ref = torch.sigmoid(ref)[0].numpy()
        theirs.append(time.perf_counter() - t0)
    return {
        "timing_volume": list(vol.shape),
        "windows": res.info.windows,
        "segment_seconds": [round(s, 3) for s in ours],
        "monai_seconds": [round(s, 3) for s in theirs],
        "monai_time_ratio": round(statistics.median(a / b for a, b in zip(ours, theirs)), 3),
        "max_abs_diff_vs_monai": float(np.abs(res.probabilities - ref).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a 160 MB volume, no MONAI memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    import torch

    report: dict = {"torch_threads": torch.get_num_threads(), "roi": list(ROI),
                    "overlap": OVERLAP, "batch": BATCH}  # fmt: skip
    report.update(timing(args.repeats))
    shape = (160, 512, 512) if args.quick else (320, 512, 512)
    half = (shape[0] // 2, *shape[1:])
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_volume(t / "v.zarr", shape)
        write_volume(t / "h.zarr", half)
        full = run_child("segment", f"{t / 'v.zarr'}|{t / 'o.zarr'}")
        halved = run_child("segment", f"{t / 'h.zarr'}|{t / 'oh.zarr'}")
        # the memory runs' own figures are nested, apart from the timing run's
        report["memory_run"] = {
            "volume": list(shape),
            "volume_mb": round(np.prod(shape) * 4 / 2**20, 1),
            **{k: round(v, 1) for k, v in full.items()},
        }
        report["half_depth"] = {
            "volume": list(half),
            "volume_mb": round(np.prod(half) * 4 / 2**20, 1),
            **{k: round(v, 1) for k, v in halved.items()},
        }
        if not args.quick:
            monai = run_child("monai", str(t / "v.zarr"))
            report["memory_run"]["monai_peak_rss_mb"] = round(monai["peak_rss_mb"], 1)
            report["memory_run"]["monai_seconds"] = round(monai["seconds"], 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
