"""Backend benchmark: how the cost of a run grows with the number of prompts; prints one JSON.

    python benchmarks/backends.py                 # all backends, 5 repeats, one torch thread
    python benchmarks/backends.py --repeats 9 --threads 2

Each backend segments the same real image (the bundled nuclei plane, tiled to 6 x 6 windows'
worth of its default window, so 64 windows at 25 % overlap) with P = 1 prompt and with P = 4
prompts. Runs alternate (P = 1, P = 4, P = 1, ...) after a warm-up. Cost is measured as the
CPU time of the process (all its threads: reading, the model, blending, writing) with one
torch thread, which does not depend on what else the machine runs; wall time is reported too,
but on a shared machine it mostly measures the other work. Each side takes its cheapest
repeat. clipseg, sam3 and grounded-sam are
the tiny random-weight models the tests build (tests/backends/tiny_models.py), loaded from
folders through get_model; their vision encoders are the heaviest part, as in the real
models. llmseg-tiny is the embedded model with its real weights.

Fields, per backend:
  windows, roi                 windows per run and window edge (the model's default)
  p1_cpu_seconds, p4_cpu_seconds   CPU time of each segment() run
  p1_wall_seconds, p4_wall_seconds wall time of the same runs
  prompt_scaling_4x            least CPU time with P = 4 / least with P = 1; target <= 1.5
  wall_scaling_4x              the same ratio for wall time
  predict_scaling_4x           the same ratio for wall time inside the model's predict
At the top level, prompt_scaling_4x maps each backend to its ratio and within_target says
whether every one is <= 1.5.

Tiny models are dominated by per-call overhead, so --real-size adds, under real_size_flops,
the floating-point operations of one window at the real models' sizes (random weights, no
download; torch's FlopCounterMode, on the meta device where the model allows it): the
prompt-independent part (vision encoders), the part paid per prompt, and their ratio for
4 prompts against 1. Grounded SAM's per-prompt cost is SAM's mask decoder per object found, so
it is given per object, with the ratio at 10 objects per prompt and the number of objects per
prompt and window at which the ratio reaches 1.5. Takes about a minute on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["cell nuclei", "water", "bone", "car"]
TARGET = 1.5


def tiled_plane(size: int, z: int = 30) -> np.ndarray:
    """A (size, size) uint16 plane made of real nuclei slices (mirrored so tiles join)."""
    import tifffile

    tile = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")[z]
    quad = np.block([[tile, tile[:, ::-1]], [tile[::-1], tile[::-1, ::-1]]])
    reps = -(-size // quad.shape[0])
    return np.ascontiguousarray(np.tile(quad, (reps, reps))[:size, :size])


def build_models(folder: Path) -> dict[str, str]:
    """Tiny models of each architecture, saved as the tests save them."""
    sys.path.insert(0, str(ROOT))
    from tests.backends.tiny_models import build_clipseg, build_grounded_sam, build_sam3

    return {
        "llmseg-tiny": "llmseg-tiny",
        "clipseg": f"clipseg:{build_clipseg(folder / 'clipseg')}",
        "sam3": f"sam3:{build_sam3(folder / 'sam3')}",
        "grounded-sam": f"grounded-sam:{build_grounded_sam(folder / 'grounded-sam')}",
    }


def measure(spec: str, repeats: int) -> dict:
    from napari_llmseg import get_model, segment

    model = get_model(spec, device="cpu")
    roi = model.default_roi
    image = tiled_plane(6 * roi)
    predict_time = [0.0]
    original = model.predict

    def timed_predict(batch, encoded):
        t0 = time.perf_counter()
        try:
            return original(batch, encoded)
        finally:
            predict_time[0] += time.perf_counter() - t0

    model.predict = timed_predict  # type: ignore[method-assign]

    def run(prompts: list[str]) -> tuple[float, float, float, int]:
        predict_time[0] = 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        res = segment(image, prompts, model=model, batch_size=4)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        return cpu, wall, predict_time[0], res.info.windows

    run(PROMPTS)  # warm-up: kernels, caches
    runs: dict[int, list[tuple[float, float, float, int]]] = {1: [], 4: []}
    for _ in range(repeats):
        for p in (1, 4):
            runs[p].append(run(PROMPTS[:p]))

    def least(p: int, k: int) -> float:
        return min(r[k] for r in runs[p])

    return {
        "windows": runs[1][0][3],
        "roi": roi,
        "p1_cpu_seconds": [round(r[0], 4) for r in runs[1]],
        "p4_cpu_seconds": [round(r[0], 4) for r in runs[4]],
        "p1_wall_seconds": [round(r[1], 4) for r in runs[1]],
        "p4_wall_seconds": [round(r[1], 4) for r in runs[4]],
        "prompt_scaling_4x": round(least(4, 0) / least(1, 0), 3),
        "wall_scaling_4x": round(least(4, 1) / least(1, 1), 3),
        "predict_scaling_4x": round(least(4, 2) / least(1, 2), 3),
    }


def _flops(fn) -> float:
    """GFLOP of ``fn()`` (a multiply-add counts 2), under inference mode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def _ratio(fixed: float, per_prompt: float) -> float:
    return round((fixed + 4 * per_prompt) / (fixed + per_prompt), 3)


def real_size_flops() -> dict:
    """FLOPs of one window at real model sizes; see the module docstring."""
    import torch
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        Sam3Config,
        Sam3Model,
        SamConfig,
        SamModel,
    )
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    meta = torch.device("meta")
    out: dict = {}

    # CLIPSeg: CIDAS/clipseg-rd64-refined (ViT-B/16 at 352, reduce_dim 64, refined decoder)
    clipseg_config = CLIPSegConfig(
        vision_config={"patch_size": 16}, use_complex_transposed_convolution=True
    )
    with meta:
        clipseg = CLIPSegForImageSegmentation(clipseg_config).eval()
    pixels = torch.empty(1, 3, 352, 352, device=meta)
    vision: list = []
    v = _flops(
        lambda: vision.append(
            clipseg.clip.get_image_features(pixel_values=pixels, output_hidden_states=True)
        )
    )
    acts = [vision[0].hidden_states[i + 1] for i in clipseg.extract_layers]
    d = _flops(lambda: clipseg.decoder(acts, torch.empty(1, 512, device=meta)))
    out["clipseg"] = {
        "vision_gflop": round(v, 1),
        "per_prompt_gflop": round(d, 2),
        "flop_scaling_4x": _ratio(v, d),
    }

    # SAM 3 (facebook/sam3 sizes). Its DETR decoder needs real tensors, so the prompt part runs
    # on the CPU in a Sam3Model with a shrunk backbone and text encoder, fed features of the
    # real shapes; the prompt part is linear in P (it runs on a batch of P).
    with meta:
        sam3_meta = Sam3Model(Sam3Config()).eval()
    feats: list = []
    v = _flops(
        lambda: feats.append(
            sam3_meta.get_vision_features(pixel_values=torch.empty(1, 3, 1008, 1008, device=meta))
        )
    )
    small = {
        "hidden_size": 32,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
    }
    sam3 = Sam3Model(
        Sam3Config(
            vision_config={
                "backbone_config": {
                    "model_type": "sam3_vit_model",
                    **small,
                    "global_attn_indexes": [0],
                }
            },
            text_config={**small, "projection_dim": 32},
        )
    ).eval()
    shared = Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(torch.randn(f.shape) for f in feats[0].fpn_hidden_states),
        fpn_position_encoding=tuple(torch.randn(f.shape) for f in feats[0].fpn_position_encoding),
    )
    d = _flops(
        lambda: sam3(
            vision_embeds=shared,
            text_embeds=BaseModelOutputWithPooling(pooler_output=torch.randn(1, 32, 256)),
            attention_mask=torch.ones(1, 32, dtype=torch.long),
        )
    )
    out["sam3"] = {
        "vision_gflop": round(v, 1),
        "per_prompt_gflop": round(d, 1),
        "flop_scaling_4x": _ratio(v, d),
    }

    # Grounding DINO tiny + SAM ViT-B: the detector reads all prompts in one caption (run on
    # the CPU: it does not run on the meta device); SAM's mask decoder runs once per object.
    detector = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()

    def caption(n_prompts: int) -> torch.Tensor:
        words = [2000 + i for i in range(2 * n_prompts)]  # two tokens per prompt, then "."
        ids = [101] + [t for k in range(n_prompts) for t in (*words[2 * k : 2 * k + 2], 1012)]
        return torch.tensor([[*ids, 102]])

    image = torch.randn(1, 3, 800, 800)
    det = {
        p: _flops(lambda p=p: detector(pixel_values=image, input_ids=caption(p))) for p in (1, 4)
    }
    with meta:
        sam = SamModel(SamConfig()).eval()
    emb: list = []
    enc = _flops(
        lambda: emb.append(sam.get_image_embeddings(torch.empty(1, 3, 1024, 1024, device=meta)))
    )
    per_object = (
        _flops(
            lambda: sam(
                image_embeddings=emb[0],
                input_boxes=torch.empty(1, 10, 4, device=meta),
                multimask_output=False,
            )
        )
        / 10
    )
    fixed1, fixed4 = det[1] + enc, det[4] + enc
    at_15 = (1.5 * fixed1 - fixed4) / (4 - 1.5) / per_object
    out["grounded-sam"] = {
        "detector_gflop_1_prompt": round(det[1], 1),
        "detector_gflop_4_prompts": round(det[4], 1),
        "sam_encoder_gflop": round(enc, 1),
        "sam_decoder_gflop_per_object": round(per_object, 2),
        "flop_scaling_4x_at_10_objects": round(
            (fixed4 + 40 * per_object) / (fixed1 + 10 * per_object), 3
        ),
        "objects_per_prompt_at_1_5x": round(at_15),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: stable when shared)"
    )
    parser.add_argument(
        "--backends",
        nargs="*",
        default=None,
        help="subset of llmseg-tiny clipseg sam3 grounded-sam",
    )
    parser.add_argument(
        "--real-size", action="store_true", help="also count FLOPs at the real models' sizes"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    report: dict = {"torch_threads": torch.get_num_threads(), "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        specs = build_models(Path(tmp))
        names = args.backends or list(specs)
        report["backends"] = {name: measure(specs[name], args.repeats) for name in names}
    report["prompt_scaling_4x"] = {
        name: r["prompt_scaling_4x"] for name, r in report["backends"].items()
    }
    report["within_target"] = all(v <= TARGET for v in report["prompt_scaling_4x"].values())
    if args.real_size:
        report["real_size_flops"] = real_size_flops()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
