"""llmseg-tiny's forward pass: the network as trained against its inference copy, with glibc's
malloc defaults against the engine's run settings; prints one JSON object.

    python benchmarks/tiny_inference.py [--repeats 5] [--batches 25]

Every measurement is a fresh child process (malloc settings are process-wide) with one torch
thread that runs `--batches` batches of 4 windows of 256 x 256 pixels (a real nuclei plane,
normalised as the engine does) after two warm-up batches, on its main thread or, as on a Dask
worker or in napari, on another thread. The variants alternate over `--repeats` rounds, so
noise from other jobs hits all of them; each reports its median.

Fields, per variant "<net>/<malloc>/<thread>":
  ms_per_window      wall milliseconds per window
  faults_per_window  minor page faults per window
net: "trained" (LLMSegTiny.logits, as fine-tuning runs it) or "inference" (predict(): BatchNorm
folded, channels-last); malloc: "glibc" (the process's defaults) or "run" (engine/allocator.py,
as every engine run holds it); thread: "main" or "other".
At the top level: inference_speedup (trained / inference, both under "run" on the main thread),
allocator_speedup (glibc / run, inference net, main thread) and the same on another thread.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(net: str, malloc: str, thread: str, batches: int) -> dict:
    import contextlib
    import resource
    import threading
    import time

    import numpy as np
    import tifffile
    import torch

    from napari_llmseg import get_model
    from napari_llmseg.engine.allocator import run_allocator
    from napari_llmseg.engine.normalize import compute_stats
    from napari_llmseg.io.open import open_image

    torch.set_num_threads(1)
    model = get_model("llmseg-tiny", device="cpu")
    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")
    plane = np.tile(vol[30], (2, 2))[:512, :512]
    raw = np.stack([plane[:256, :256], plane[:256, 256:], plane[256:, :256], plane[256:, 256:]])
    x = model.preprocess(raw[:, None].astype(np.float32), compute_stats(open_image(plane)))
    enc = model.encode_prompts(["nuclei"])

    def forward() -> None:
        if net == "inference":
            model.predict(x, enc)
        else:
            with torch.inference_mode():
                model.logits(x, enc).numpy()

    result: dict = {}

    def work() -> None:
        with run_allocator() if malloc == "run" else contextlib.nullcontext():
            for _ in range(2):
                forward()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            for _ in range(batches):
                forward()
            seconds = time.perf_counter() - t0
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        windows = 4 * batches
        result.update(ms_per_window=1000 * seconds / windows, faults_per_window=faults / windows)

    if thread == "main":
        work()
    else:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, batches=args.batches)))
        return
    variants = [
        *itertools.product(["trained", "inference"], ["glibc", "run"], ["main"]),
        ("inference", "glibc", "other"),
        ("inference", "run", "other"),
    ]
    runs: dict[str, list[dict]] = {"/".join(v): [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            out = subprocess.run(
                [sys.executable, __file__, "--batches", str(args.batches), "--child", *v],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            runs["/".join(v)].append(json.loads(out.strip().splitlines()[-1]))
    report: dict = {"windows_per_measurement": 4 * args.batches, "repeats": args.repeats}
    for name, rs in runs.items():
        report[name] = {
            "ms_per_window": round(statistics.median(r["ms_per_window"] for r in rs), 2),
            "faults_per_window": round(statistics.median(r["faults_per_window"] for r in rs)),
        }

    def ms(name: str) -> float:
        return report[name]["ms_per_window"]

    report["inference_speedup"] = round(ms("trained/run/main") / ms("inference/run/main"), 3)
    report["allocator_speedup"] = round(ms("inference/glibc/main") / ms("inference/run/main"), 3)
    report["allocator_speedup_other_thread"] = round(
        ms("inference/glibc/other") / ms("inference/run/other"), 3
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
