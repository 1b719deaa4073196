"""Command line: ``napari-llmseg segment``, ``napari-llmseg train`` and ``napari-llmseg models``.

Exit codes: 0 on success, 2 for bad arguments or input (one line naming the bad value),
130 when interrupted with Ctrl-C (the output store can then be completed with --resume).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends.hf import WeightsUnavailableError
from .io._optional import MissingExtraError

if TYPE_CHECKING:
    from .options import SegmentOptions

#: Errors that mean "the user gave something we cannot use": reported in one line, exit 2.
#: WeightsUnavailableError (weights not cached and not fetchable) says how to get them.
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    WeightsUnavailableError,
    MissingExtraError,
)


def _size(text: str) -> float | str:
    """A plain number stays a number of pixels; anything else is parsed with its unit later."""
    try:
        return float(text)
    except ValueError:
        return text


def _ints(text: str) -> int | tuple[int | None, ...] | str:
    """``"96"`` -> 96, ``"96,96,-1"`` -> (96, 96, -1); anything else is left for
    SegmentOptions to refuse with its own message (exit 2)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [None if p.lower() == "none" else int(p) for p in parts]
    except ValueError:
        return text
    return values[0] if len(values) == 1 and values[0] is not None else tuple(values)


def _floats(text: str) -> float | tuple[float, ...] | str:
    """``"0.5"`` -> 0.5, ``"0.5,0.25"`` -> (0.5, 0.25); anything else is left for
    SegmentOptions to refuse."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        return text
    return values[0] if len(values) == 1 else tuple(values)


def _probability(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """argparse, with errors in one line (the usage is in --help)."""

    def error(self, message: str) -> Any:
        self.exit(2, f"napari-llmseg: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="napari-llmseg",
        description="Text-prompted segmentation of images larger than memory.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{segment,train,models}")

    seg = sub.add_parser(
        "segment",
        help="segment an image by text prompts",
        description="Segment INPUT (.zarr, .tif/.tiff incl. GeoTIFF, .vrt, .jp2, .npy, "
        ".nii/.nii.gz, or a DICOM folder; or several raster files on one grid, stacked as "
        "bands in the order given) by text prompts; write labels and probabilities to a zarr "
        "store, labels to a Cloud-Optimised GeoTIFF or NIfTI file with the input's "
        "georeferencing or affine, and polygons to a GeoPackage/GeoJSON file.",
        epilog="examples: napari-llmseg segment sample_data/nuclei.tif -p nuclei -o nuclei.zarr | "
        "napari-llmseg segment scene.tif --bands 3,2,1 -p water -o water.tif --vector "
        "water.gpkg | napari-llmseg segment LC09_..._SR_B4.TIF LC09_..._SR_B3.TIF "
        "LC09_..._SR_B2.TIF -p water -o water.tif | napari-llmseg segment ct/ -p bone "
        "--window bone -o bone.nii.gz",
    )
    seg.add_argument(
        "input",
        nargs="+",
        help="image: .zarr, .tif/.tiff, .vrt, .jp2, .npy, .nii/.nii.gz, or a DICOM series "
        "folder; several raster files (one per band, same size, CRS and transform) are "
        "stacked as the bands of one image",
    )
    seg.add_argument(
        "-p",
        "--prompt",
        dest="prompts",
        action="append",
        required=True,
        help="what to segment; repeat for several prompts",
    )
    seg.add_argument(
        "-o",
        "--out",
        required=True,
        help="output: a .zarr store, a .tif/.tiff (GeoTIFF) or .nii/.nii.gz file (written from "
        "a working store OUT.zarr kept beside it)",
    )
    seg.add_argument(
        "--model",
        default=None,
        help="llmseg-tiny (default), clipseg, sam3, grounded-sam, NAME:MODEL_ID, NAME:FOLDER "
        "or a model folder; see `napari-llmseg models`",
    )
    seg.add_argument(
        "--roi",
        type=_ints,
        default=None,
        help="window size in pixels (default: the model's): N, or one size per window axis "
        "such as 96,96,96 for 3D windows over a volume (-1: the image's extent)",
    )
    seg.add_argument(
        "--overlap",
        type=_floats,
        default=None,
        help="window overlap in [0, 1), one value or one per window axis (default: the "
        "model's, 0.25 unless a MONAI bundle's inferer names another)",
    )
    seg.add_argument(
        "--sigma-scale",
        type=_floats,
        default=0.125,
        help="gaussian blending: sigma as a fraction of the window, one value or one per axis "
        "(default 0.125)",
    )
    seg.add_argument(
        "--cval",
        type=float,
        default=None,
        help="raw value of pixels outside the image (default: the model's own)",
    )
    seg.add_argument(
        "--class-names",
        default=None,
        metavar="FILE.json|K=NAME,...",
        help='output channels of a model with fixed classes, as a JSON file ({"1": '
        '"liver"}, a list, or a MONAI channel_def) or 1=liver,2=kidney_right; prompts are '
        "matched to them (a MONAI bundle names its own)",
    )
    seg.add_argument("--batch", type=int, default=4, help="windows per model call (default 4)")
    seg.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian")
    seg.add_argument(
        "--threshold", type=_probability, default=0.5, help="probability threshold (default 0.5)"
    )
    seg.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)"
    )
    seg.add_argument(
        "--channel-axis", type=int, default=None, help="axis holding channels, if any"
    )
    seg.add_argument(
        "--chunks",
        type=int,
        default=None,
        help="output chunk edge along the window axes (default 512 x 512 for 2D windows, "
        "32 x 256 x 256 for 3D)",
    )
    seg.add_argument(
        "--bands",
        default=None,
        help="(Geo)TIFF bands by 1-based number or description, e.g. 3,2,1 for true colour "
        "on Landsat 5/7 (4,3,2 on Landsat 8/9); with several input files, numbered across "
        "them",
    )
    seg.add_argument(
        "--window",
        default=None,
        help="CT window instead of percentile normalisation: bone, soft-tissue, lung, brain, "
        "or LEVEL,WIDTH in HU",
    )
    seg.add_argument(
        "--probabilities",
        nargs="?",
        const="float32",
        default=None,
        choices=("none", "uint8", "float16", "float32"),
        help="how the .zarr store keeps probabilities: uint8 (the default: round(p * 255)), "
        "float16, float32, or none (labels only); given with a .tif/.nii output, also write "
        "OUT_probabilities.tif/.nii.gz (--probabilities alone: float32)",
    )
    seg.add_argument(
        "--vector",
        default=None,
        help="also write polygons of the labels (2D inputs) to a .gpkg or .geojson file, in the "
        "input's CRS, with fields label, value and area",
    )
    seg.add_argument(
        "--simplify",
        type=float,
        default=None,
        help="simplify --vector polygons with this tolerance in CRS units",
    )
    seg.add_argument(
        "--instances", action="store_true", help="also label objects (one id per object)"
    )
    seg.add_argument(
        "--split", action="store_true", help="split touching objects (watershed; with --instances)"
    )
    seg.add_argument(
        "--min-size", default="0",
        help="remove smaller objects: pixels, or a size with unit such as '20 um^3' or '0.5 mL'",
    )  # fmt: skip
    seg.add_argument("--fill-holes", action="store_true", help="fill holes in objects")
    seg.add_argument("--smooth", type=int, default=0, help="opening radius in pixels (default 0)")
    where = seg.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=int, default=None,
        help="run on a local Dask cluster of N single-threaded worker processes",
    )  # fmt: skip
    where.add_argument(
        "--scheduler", default=None, help="run on the Dask scheduler at ADDRESS (tcp://host:8786)"
    )
    seg.add_argument(
        "--report", action=argparse.BooleanOptionalAction, default=True,
        help="write OUT_report.html (HTML: sizes, objects, thumbnail, provenance) beside the "
        "output (default: on)",
    )  # fmt: skip
    seg.add_argument("--resume", action="store_true", help="complete an interrupted run in --out")
    seg.add_argument("--overwrite", action="store_true", help="replace an existing --out store")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")

    tr = sub.add_parser(
        "train",
        help="teach a model your concept from labels or corrections, or train llmseg-tiny",
        description="Teach llmseg-tiny what PROMPT means from LABELS (nonzero = the concept, "
        "on the labelled planes) or CORRECTIONS (1 = the concept, 2 = not, 0 = unknown), in "
        "seconds, as the widget's Teach button does (--method teach, the default); or "
        "fine-tune the model's decoder with early stopping (--method finetune, minutes); or, "
        "with --config, train llmseg-tiny from scratch on the datasets the config names.",
        epilog="examples: napari-llmseg train --image t1.nii.gz --labels cb.nii.gz --prompt "
        "cerebellum --slices 30:35 --out cerebellum-model | napari-llmseg train --image ct.nii.gz "
        "--corrections painted.nii.gz --prompt spleen --out spleen-model | napari-llmseg train "
        "--config configs/llmseg-tiny.json --out my-tiny",
    )
    tr.add_argument("--image", help="image to learn from (any format segment reads)")
    tr.add_argument("--labels", help="labels of the same spatial shape; nonzero = the concept")
    tr.add_argument(
        "--corrections", help="painted corrections of the same shape: 1 concept, 2 not, 0 unknown"
    )
    tr.add_argument(
        "--method", choices=("teach", "finetune"), default="teach",
        help="teach (default: seconds, a classifier on the frozen model's features) or "
        "finetune (minutes: the decoder trains)",
    )  # fmt: skip
    tr.add_argument("--seconds", type=float, default=None, help="teach: time budget")
    tr.add_argument("--prompt", help="the name the concept will answer to")
    tr.add_argument(
        "--base", default="llmseg-tiny", help="llmseg-tiny (default), clipseg, or a model folder"
    )
    tr.add_argument("--out", required=True, help="folder to write the model to")
    tr.add_argument("--epochs", type=int, default=None, help="finetune: most epochs (30)")
    tr.add_argument("--patience", type=int, default=None, help="finetune: patience (6)")
    tr.add_argument("--slices", help="planes z0:z1 of a volume to train on (default: labelled)")
    tr.add_argument("--lr", type=float, default=None, help="learning rate")
    tr.add_argument("--channel-axis", type=int, default=None, help="axis holding channels")
    tr.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps, auto")
    tr.add_argument("--train-all", action="store_true", help="train the vision encoder too")
    tr.add_argument("--config", type=Path, help="train llmseg-tiny from scratch from this config")
    tr.add_argument("--steps", type=int, default=None, help="with --config: override steps")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")

    models = sub.add_parser(
        "models",
        help="list the available models, or what one model knows",
        description="List the available models; with MODEL, load it and list its classes (a "
        "model with fixed classes, such as a MONAI bundle) or its concepts.",
    )
    models.add_argument(
        "model", nargs="?", default=None, help="a model name, model folder or MONAI bundle"
    )
    models.add_argument("--device", default="cpu", help="where to load MODEL (default cpu)")
    return parser


def _train(args: argparse.Namespace) -> int:
    if args.config is not None:
        given = [f"--{n}" for n in ("image", "labels", "prompt") if getattr(args, n)]
        if given:
            raise ValueError(f"--config trains from scratch; it does not take {', '.join(given)}")
        from .training.train import train_from_config

        train_from_config(args.config, Path(args.out), steps=args.steps, overwrite=args.overwrite)
        return 0
    if args.method == "teach":
        return _teach(args)
    if args.corrections:
        raise ValueError("--corrections is for --method teach; fine-tuning takes --labels")
    missing = [f"--{n}" for n in ("image", "labels", "prompt") if not getattr(args, n)]
    if missing:
        raise ValueError(
            f"fine-tuning needs {', '.join(missing)} (or --config to train from scratch)"
        )
    from tqdm import tqdm

    from .training.finetune import finetune

    bar = None

    def progress(epoch: int, total: int, loss: float, dice: float) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:  # made on the first epoch: a refused run prints one line only
            bar = tqdm(total=total, unit="epoch", desc="fine-tuning")
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", val_dice=f"{dice:.3f}")

    try:
        result = finetune(
            args.image,
            args.labels,
            args.prompt,
            out=args.out,
            base=args.base,
            epochs=30 if args.epochs is None else args.epochs,
            patience=6 if args.patience is None else args.patience,
            slices=args.slices,
            lr=args.lr,
            channel_axis=args.channel_axis,
            device=args.device,
            train_all=args.train_all,
            overwrite=args.overwrite,
            progress=progress,
        )
    finally:
        if bar is not None:
            bar.close()
    print(f"{result.folder}")
    print(
        f"{result.prompt}: validation Dice {result.val_dice_before:.3f} -> {result.val_dice:.3f} "
        f"(epoch {result.best_epoch} of {result.epochs_run}; {result.trainable_parameters:,} of "
        f"{result.total_parameters:,} parameters trained; {result.seconds:.0f} s)"
    )
    return 0


def _teach(args: argparse.Namespace) -> int:
    """``napari-llmseg train --method teach``: :func:`napari_llmseg.teach` on the labels or
    corrections."""
    given = ("epochs", "patience", "lr")
    finetune_only = [f"--{n}" for n in given if getattr(args, n) is not None]
    finetune_only += ["--train-all"] if args.train_all else []
    if finetune_only:
        raise ValueError(f"{', '.join(finetune_only)} apply to --method finetune, not teach")
    if bool(args.labels) == bool(args.corrections):
        raise ValueError("teaching needs --labels or --corrections (one of them)")
    missing = [f"--{n}" for n in ("image", "prompt") if not getattr(args, n)]
    if missing:
        raise ValueError(f"teaching needs {', '.join(missing)}")
    import numpy as np
    from tqdm import tqdm

    from .io.open import open_image
    from .training.finetune import parse_slices, read_labels
    from .training.folders import check_output_folder
    from .training.teach import labels_to_corrections, teach

    marks_path = args.labels or args.corrections
    check_output_folder(Path(args.out), args.overwrite, [args.image, marks_path])
    marks = open_image(marks_path)
    if marks.n_channels != 1:
        raise ValueError(f"labels must have one channel, '{marks.name}' has {marks.n_channels}")
    painted = np.asarray(read_labels(marks))
    if args.labels:
        if np.dtype(painted.dtype).kind not in "biu":
            raise ValueError(f"--labels must hold integer labels, '{args.labels}' holds "
                             f"{painted.dtype}")  # fmt: skip
        planes = None
        if args.slices:
            chosen = parse_slices(args.slices, painted.shape[0] if painted.ndim == 3 else 1)
            planes = list(chosen) if chosen is not None else None
        painted = labels_to_corrections(painted, planes)
    elif args.slices:
        raise ValueError("--slices chooses labelled planes; corrections say where they apply")
    bar = None if args.quiet else tqdm(total=None, unit="step", desc="teaching")

    def progress(step: Any) -> None:
        if bar is not None:
            bar.set_description(f"teaching: {step.stage}")
            bar.total = step.total
            bar.n = step.done
            bar.refresh()

    try:
        model = teach(
            args.image, painted, args.prompt, base=args.base, out=args.out,
            overwrite=args.overwrite, seconds=args.seconds, channel_axis=args.channel_axis,
            device=args.device, progress=progress,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    print(f"{args.out}")
    if model is None:  # cancelled (SIGINT)
        return 130
    print(f"{args.prompt}: taught from {model.summary()}")
    return 0


def segment_options(args: argparse.Namespace) -> SegmentOptions:
    """The run's options from ``napari-llmseg segment`` arguments (checked on creation)."""
    from .backends.classes import parse_class_names
    from .options import SegmentOptions

    return SegmentOptions(
        model=args.model,
        roi_size=args.roi,
        overlap=args.overlap,
        batch_size=args.batch,
        blend=args.blend,
        sigma_scale=args.sigma_scale,
        cval=args.cval,
        threshold=args.threshold,
        device=args.device,
        channel_axis=args.channel_axis,
        out=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        chunks=args.chunks,
        instances=args.instances,
        split=args.split,
        min_size=_size(args.min_size),
        fill_holes=args.fill_holes,
        smooth=args.smooth,
        scheduler=(f"local:{args.workers}" if args.workers is not None else args.scheduler),
        bands=args.bands,
        window=args.window,
        probabilities=args.probabilities,
        vector=args.vector,
        simplify=args.simplify,
        report=args.report,
        class_names=None if args.class_names is None else parse_class_names(args.class_names),
    )


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .api import segment

    if args.simplify is not None and args.vector is None:
        raise ValueError("--simplify applies to --vector output; add --vector out.gpkg")
    if args.simplify is not None and not args.simplify >= 0:
        raise ValueError(f"--simplify must be a tolerance >= 0 in CRS units, got {args.simplify}")
    options = segment_options(args)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(
                total=total, unit="win", desc="segmenting", file=sys.stderr, dynamic_ncols=True
            )
        bar.update(done - bar.n)

    cancel = threading.Event()
    image = args.input[0] if len(args.input) == 1 else args.input
    try:
        with _graceful_signals(cancel) as received:
            result = segment(image, args.prompts, options=options, progress=progress,
                             cancel=cancel)  # fmt: skip
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(_resume_hint("interrupted", args.out), file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    if not result.complete:
        signum = received.get("signal", signal.SIGINT)
        print(_resume_hint(f"cancelled ({signal.Signals(signum).name})", args.out),
              file=sys.stderr)  # fmt: skip
        return 128 + int(signum)
    if result.out is not None and result.out == options.out:
        print(f"wrote {result.out}")
    for path in result.files:
        print(f"wrote {path}")
    if result.out is not None and result.out != options.out:
        print(f"working store {result.out} (what --resume completes; delete it when done)")
    for prompt, found in (result.metadata.get("prompt_classes") or {}).items():
        print(f"{prompt}: classes {', '.join(found['classes'])}")
    for line in result.summary():
        print(line)
    if result.info.batch_size_used < args.batch:
        print(
            f"note: GPU memory ran out with --batch {args.batch}; the run finished with "
            f"{result.info.batch_size_used} windows at once"
        )
    return 0


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    file: Any = None, line: str | None = None,
) -> None:  # fmt: skip
    """Warnings about the run (UserWarning) as one line each on stderr, as they happen (a
    run on the wrong bands can be stopped at once); others as Python shows them."""
    if issubclass(category, UserWarning):
        print(f"napari-llmseg: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _model_classes(name: str, device: str) -> int:
    """``napari-llmseg models MODEL``: what one model answers to."""
    from .backends.registry import get_model

    model = get_model(name, device=device)
    classes = getattr(model, "class_names", None)
    if classes:
        print(f"{model.name} ({name}): {len(classes)} classes, one output channel each")
        for channel, label in sorted(classes.items()):
            print(f"  {channel:>3}  {label}")
        print("Prompts are matched to these classes by words ('kidneys' -> every kidney "
              "class) or by meaning (docs/radiology.md).")  # fmt: skip
        return 0
    concepts = model.concepts()
    what = ", ".join(concepts) if concepts else "open vocabulary (any text prompt)"
    print(f"{model.name} ({name}) knows: {what}")
    return 0


def _models(args: argparse.Namespace | None = None) -> int:
    from .backends.registry import list_models, model_info

    if args is not None and getattr(args, "model", None):
        return _model_classes(args.model, args.device)

    rows = [("name", "default id", "instances", "weights local", "description")]
    for name in list_models():
        info = model_info(name)
        rows.append(
            (
                info.name,
                info.default_id,
                "yes" if info.gives_instances else "no",
                "yes" if info.available_offline else "no",
                info.description,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    print()
    for name in list_models():  # what each model knows: a closed vocabulary, or any text
        info = model_info(name)
        what = ", ".join(info.concepts) or info.vocabulary or "open vocabulary (any text prompt)"
        print(f"{name} knows: {what}")
    print(
        "A model folder (--model FOLDER) lists its own concepts in its config.json; a prompt far"
        " from a model's concepts is warned about."
    )
    return 0


def _resume_hint(what: str, out: str) -> str:
    return (
        f"napari-llmseg: {what}; finished chunks are in {out}, complete them with the same "
        "command and --resume"
    )


@contextlib.contextmanager
def _graceful_signals(cancel: threading.Event) -> Iterator[dict]:
    """The first Ctrl-C, SIGTERM or SIGHUP stops the run after its current batch (finished
    chunks stay written, the store says "cancelled" and --resume completes it); a second
    Ctrl-C stops at once."""
    received: dict[str, int] = {}

    def handler(signum: int, frame: Any) -> None:
        if cancel.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.setdefault("signal", signum)
        cancel.set()
        print(
            f"napari-llmseg: {signal.Signals(signum).name}: stopping after the current batch "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    if threading.current_thread() is not threading.main_thread():
        yield received  # signals reach the main thread only
        return
    wanted = [signal.SIGINT, signal.SIGTERM] + (
        [signal.SIGHUP] if hasattr(signal, "SIGHUP") else []
    )
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


#: errno values that mean "this place cannot be written": read-only, full, over quota, denied.
_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM}


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-llmseg`` console script.

    Exit codes: 0 success; 2 bad arguments or input, an output that cannot be written (read
    only, disk full, locked by another run); 128 + N after signal N (130 for Ctrl-C); 1 for
    an internal error. Errors are one line on stderr; set NAPARI_LLMSEG_DEBUG=1 to see the
    traceback of an internal error.
    """
    import os

    from .engine.lock import StoreLockedError, StoreReplacedError

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        if args.command == "segment":
            return _segment(args)
        if args.command == "train":
            return _train(args)
        return _models(args)
    except (*USER_ERRORS, StoreLockedError, StoreReplacedError) as err:
        print(f"napari-llmseg: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # read-only file system, disk full, permission denied...
        where = err.filename or getattr(args, "out", None)
        reason = err.strerror or _one_line(err)
        verb = "write" if err.errno in _WRITE_ERRNOS else "read or write"
        place = f" '{where}'" if where else ""
        print(f"napari-llmseg: error: cannot {verb}{place}: {reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-llmseg: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("NAPARI_LLMSEG_DEBUG"):
            raise
        print(
            f"napari-llmseg: internal error: {type(err).__name__}: {_one_line(err)} (set "
            "NAPARI_LLMSEG_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
