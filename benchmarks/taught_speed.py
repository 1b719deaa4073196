"""What running a taught model costs against llmseg-tiny itself; prints one JSON object.

    python benchmarks/taught_speed.py [--repeats 3]

The CT case of benchmarks/teach.py (three fully painted planes of the head CT slab, the
intracranial space) is taught once; then ``segment`` of that slab stacked four times (104 x
256 x 256) runs with the taught model and with llmseg-tiny, alternately, side by side in one
run. Reports each run's seconds, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from teach import corrections, load_cases

    from napari_llmseg import segment, teach

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    case = next(c for c in load_cases() if c.name == "ct")
    model = teach(case.image, corrections(case, "full"), case.prompt)
    image = np.concatenate([case.image] * 4)
    seconds: dict[str, list[float]] = {"taught": [], "llmseg-tiny": []}
    for _ in range(args.repeats):
        for name, kwargs in (("taught", {"model": model}), ("llmseg-tiny", {})):
            t0 = time.perf_counter()
            segment(image, case.prompt, **kwargs)
            seconds[name].append(round(time.perf_counter() - t0, 2))
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    ratio = round(medians["taught"] / medians["llmseg-tiny"], 2)
    out = {"benchmark": "taught_speed", "shape": list(image.shape), "seconds": seconds}
    print(json.dumps({**out, "median_s": medians, "taught_over_tiny": ratio}))


if __name__ == "__main__":
    main()
