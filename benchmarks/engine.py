"""Engine benchmark: overhead, speed against MONAI, and memory; prints one JSON object.

    python benchmarks/engine.py            # everything, including the 1 GiB volume (~15 min)
    python benchmarks/engine.py --quick    # without the 1 GiB volume

All inputs are built from the bundled real nuclei volume (sample_data/nuclei.tif), tiled.
Times are compared side by side in one run (segment() and MONAI alternate), so the ratios
hold on a busy machine even when the absolute seconds do not. Every memory figure is the peak
resident set size of a fresh child process that does only that one run.

Fields:
  overhead_ratio    wall time of segment() / time spent inside the model's predict calls
  monai_time_ratio  wall time of segment() / MONAI sliding_window_inference, same input,
                    model, windows, batch size and normalisation
  peak_rss_mb, monai_peak_rss_mb   peak RSS during one run of each on a 4096 x 4096 image
                    in memory (model already loaded; includes the process's baseline)
  rss_growth_4x     peak RSS segmenting a zarr volume 4x larger / the smaller one (out= zarr)
  peak_rss_1gb_mb   peak RSS of the whole process (including loading the model) segmenting
                    a 1 GiB uint16 zarr volume into a zarr store
  light_model       a small convolutional network (about 1 ms per window) on a 64 x 1024 x 1024
                    zarr volume into a result store, for each way of keeping probabilities:
                    overhead_ratio_<kind>: wall time of the whole run (pyramid included) / time
                    in the model; setup_seconds_<kind>: until the first batch;
                    after_last_window_seconds_<kind>: from the last batch to the result (the
                    writer's queue, pyramid chunks left, files); model_alone_seconds: the same
                    batches through the model with nothing else running
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROI, OVERLAP, BATCH = 256, 0.25, 4


def tiled_plane(size: int, z: int = 30) -> np.ndarray:
    """A (size, size) uint16 plane made of real nuclei slices (mirrored so tiles join)."""
    import tifffile

    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")
    tile = vol[z]
    quad = np.block([[tile, tile[:, ::-1]], [tile[::-1], tile[::-1, ::-1]]])
    reps = -(-size // quad.shape[0])
    return np.tile(quad, (reps, reps))[:size, :size]


def write_volume(path: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> None:
    """Write a uint16 zarr volume plane by plane (never held whole in memory)."""
    import tifffile
    import zarr

    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")
    z = zarr.create_array(path, shape=shape, chunks=chunks, dtype=np.uint16)
    for i in range(0, shape[0], chunks[0]):
        n = min(chunks[0], shape[0] - i)
        block = np.empty((n, *shape[1:]), np.uint16)
        for k in range(n):
            tile = vol[22 + (i + k) % 30]  # planes 22-51 all show nuclei
            quad = np.block([[tile, tile[:, ::-1]], [tile[::-1], tile[::-1, ::-1]]])
            reps = -(-shape[1] // quad.shape[0]), -(-shape[2] // quad.shape[1])
            block[k] = np.tile(quad, reps)[: shape[1], : shape[2]]
        z[i : i + n] = block


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak() -> None:
    """Reset the kernel's high-water mark (VmHWM) so that the next reading covers one run."""
    Path("/proc/self/clear_refs").write_text("5")


def run_peak_mb() -> float:
    """Peak resident set size since the last reset_peak(), in MiB (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def monai_run(image: np.ndarray, model, stats, encoded):
    import torch
    from monai.inferers import sliding_window_inference

    from napari_llmseg.engine.allocator import run_allocator

    def predictor(t):
        return torch.from_numpy(model.predict(model.preprocess(t.numpy(), stats), encoded))

    x = torch.from_numpy(image.astype(np.float32))[None, None]
    # MONAI runs with the same malloc settings as our engine, so the ratio compares engines
    with run_allocator(), torch.inference_mode():
        out = sliding_window_inference(x, (ROI, ROI), BATCH, predictor, OVERLAP, mode="gaussian")
    return torch.sigmoid(out)


def child(task: str, arg: str) -> dict:
    from napari_llmseg import get_model, segment
    from napari_llmseg.engine.normalize import compute_stats
    from napari_llmseg.io.open import open_image

    model = get_model("llmseg-tiny", device="cpu")
    model.encode_prompts(["nuclei"])  # load the text encoder before measuring the run
    if task in ("segment-mem", "monai-mem"):
        image = tiled_plane(int(arg))
        loaded = run_peak_mb()
        reset_peak()
        if task == "segment-mem":
            segment(image, "nuclei", model=model, roi_size=ROI, overlap=OVERLAP, batch_size=BATCH)
        else:
            stats = compute_stats(open_image(image))
            monai_run(image, model, stats, model.encode_prompts(["nuclei"]))
        return {
            "peak_rss_mb": peak_rss_mb(),
            "run_peak_rss_mb": run_peak_mb(),
            "after_load_mb": loaded,
        }
    if task == "segment-zarr":
        src, out = arg.split("|")
        reset_peak()
        t0 = time.perf_counter()
        res = segment(  # the engine alone: no report (about 6 s per GiB of labels)
            src, "nuclei", model=model, roi_size=ROI, overlap=OVERLAP, batch_size=BATCH, out=out,
            report=False,
        )  # fmt: skip
        return {
            "peak_rss_mb": peak_rss_mb(),
            "run_peak_rss_mb": run_peak_mb(),
            "seconds": time.perf_counter() - t0,
            "windows": res.info.windows,
        }
    raise ValueError(task)


def light_model() -> object:
    """A small convolutional network (about 1 ms per 256 x 256 window on one CPU thread)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1)
    ).eval()

    def model(x, prompts):
        with torch.inference_mode():
            return net((x - 3000.0) / 3000.0)

    return model


def light_model_case(folder: Path, repeats: int) -> dict:
    """Overhead of the whole run with a light model, per way of keeping probabilities,
    alternating the kinds so that they share the machine's ups and downs."""
    from napari_llmseg import segment

    src = folder / "light.zarr"
    write_volume(src, (64, 1024, 1024), (8, 512, 512))
    model = light_model()
    spent = [0.0]

    def timed(x, prompts):
        t0 = time.perf_counter()
        try:
            return model(x, prompts)
        finally:
            spent[0] += time.perf_counter() - t0

    segment(src, "x", model=timed, roi_size=ROI, out=folder / "warm.zarr", report=False)
    from napari_llmseg import iter_segment

    kinds = ("float32", "uint8", "none")
    ratios: dict[str, list[float]] = {k: [] for k in kinds}
    setup: dict[str, list[float]] = {k: [] for k in kinds}
    tail: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(repeats):
        for kind in kinds:
            spent[0] = 0.0
            t0 = time.perf_counter()
            first = last = None
            gen = iter_segment(
                src, "x", model=timed, roi_size=ROI, overlap=OVERLAP, batch_size=BATCH,
                out=folder / f"o-{kind}-{r}.zarr", probabilities=kind, report=False,
            )  # fmt: skip
            for step in gen:
                if step.stage == "segment":
                    first = first or time.perf_counter()
                    last = time.perf_counter()
            end = time.perf_counter()
            ratios[kind].append((end - t0) / spent[0])
            setup[kind].append((first or end) - t0)
            tail[kind].append(end - (last or end))
    import torch

    windows = 64 * 25  # 5 x 5 windows of 256 px with overlap 0.25 over every 1024 x 1024 plane
    batch = torch.rand(BATCH, 1, ROI, ROI) * 6000
    t0 = time.perf_counter()
    for _ in range(windows // BATCH):
        model(batch, ["x"])
    alone = time.perf_counter() - t0
    return {
        "shape": [64, 1024, 1024],
        "model_seconds": round(spent[0], 2),
        "model_alone_seconds": round(alone, 2),
        **{f"overhead_ratio_{k}": round(statistics.median(v), 3) for k, v in ratios.items()},
        **{f"setup_seconds_{k}": round(statistics.median(v), 2) for k, v in setup.items()},
        **{
            f"after_last_window_seconds_{k}": round(statistics.median(v), 2)
            for k, v in tail.items()
        },
        "runs": {k: [round(x, 3) for x in v] for k, v in ratios.items()},
    }


def run_child(task: str, arg: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", task, arg],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def timing(size: int, repeats: int) -> dict:
    from napari_llmseg import get_model, segment
    from napari_llmseg.engine.normalize import compute_stats
    from napari_llmseg.io.open import open_image

    model = get_model("llmseg-tiny", device="cpu")
    image = tiled_plane(size)
    predict_time = [0.0]
    original = model.predict

    def timed_predict(batch, encoded):
        t0 = time.perf_counter()
        try:
            return original(batch, encoded)
        finally:
            predict_time[0] += time.perf_counter() - t0

    model.predict = timed_predict  # type: ignore[method-assign]
    segment(image[:512, :512], "nuclei", model=model)  # warm-up (text encoder, kernels)
    seg, fwd, mon = [], [], []
    for _ in range(repeats):
        predict_time[0] = 0.0
        t0 = time.perf_counter()
        res = segment(
            image, "nuclei", model=model, roi_size=ROI, overlap=OVERLAP, batch_size=BATCH
        )
        seg.append(time.perf_counter() - t0)
        fwd.append(predict_time[0])
        t0 = time.perf_counter()
        stats = compute_stats(open_image(image))  # MONAI gets the same whole-image normalisation
        ref = monai_run(image, model, stats, model.encode_prompts(["nuclei"]))
        mon.append(time.perf_counter() - t0)
    max_diff = float(np.abs(res.probabilities - ref[0].numpy()).max())
    return {
        "image": [size, size],
        "windows": res.info.windows,
        "segment_seconds": [round(s, 3) for s in seg],
        "predict_seconds": [round(s, 3) for s in fwd],
        "monai_seconds": [round(s, 3) for s in mon],
        "overhead_ratio": round(statistics.median(s / f for s, f in zip(seg, fwd)), 3),
        "monai_time_ratio": round(statistics.median(s / m for s, m in zip(seg, mon)), 3),
        "max_abs_diff_vs_monai": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the 1 GiB volume")
    parser.add_argument("--size", type=int, default=2048, help="edge of the 2D timing image")
    parser.add_argument("--mem-size", type=int, default=4096, help="edge of the 2D memory image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--light-only", action="store_true", help="only the light-model case")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    import torch

    report: dict = {
        "torch_threads": torch.get_num_threads(),
        "roi": ROI,
        "overlap": OVERLAP,
        "batch": BATCH,
    }
    with tempfile.TemporaryDirectory() as tmp:
        report["light_model"] = light_model_case(Path(tmp), max(1, args.repeats // 2))
    if args.light_only:
        print(json.dumps(report, indent=2))
        return
    report.update(timing(args.size, args.repeats))
    ours = run_child("segment-mem", str(args.mem_size))
    theirs = run_child("monai-mem", str(args.mem_size))
    report["memory_image"] = [args.mem_size, args.mem_size]
    report["peak_rss_mb"] = round(ours["run_peak_rss_mb"], 1)
    report["monai_peak_rss_mb"] = round(theirs["run_peak_rss_mb"], 1)
    report["rss_after_model_load_mb"] = round(ours["after_load_mb"], 1)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        small, large = (8, 1024, 1024), (32, 1024, 1024)
        write_volume(t / "v1.zarr", small, (8, 512, 512))
        write_volume(t / "v4.zarr", large, (8, 512, 512))
        r1 = run_child("segment-zarr", f"{t / 'v1.zarr'}|{t / 'o1.zarr'}")
        r4 = run_child("segment-zarr", f"{t / 'v4.zarr'}|{t / 'o4.zarr'}")
        report["rss_volume_small"] = {
            "shape": list(small),
            **{k: round(v, 1) for k, v in r1.items()},
        }
        report["rss_volume_4x"] = {"shape": list(large), **{k: round(v, 1) for k, v in r4.items()}}
        report["rss_growth_4x"] = round(r4["run_peak_rss_mb"] / r1["run_peak_rss_mb"], 3)
        if not args.quick:
            big = (32, 4096, 4096)  # 1 GiB of uint16
            write_volume(t / "big.zarr", big, (8, 512, 512))
            rb = run_child("segment-zarr", f"{t / 'big.zarr'}|{t / 'ob.zarr'}")
            report["volume_1gb"] = {
                "shape": list(big),
                "bytes": int(np.prod(big)) * 2,
                **{k: round(v, 1) for k, v in rb.items()},
            }
            report["peak_rss_1gb_mb"] = round(rb["peak_rss_mb"], 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
