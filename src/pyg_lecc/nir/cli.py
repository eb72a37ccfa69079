"""The ``pyg-lecc`` command line: train, evaluate and run NIR-GNN colorization models.

Sub-commands:

- ``train``: train NIR-GNN or the CNN baseline with the paper's recipe
  (:mod:`pyg_lecc.nir.training`).
- ``evaluate``: colorize the NIR images of a data set split and report PSNR, SSIM and the two
  angular errors against the RGB ground truth (per image and mean), optionally as JSON.
- ``pack-data``: write a compact, checksummed copy of a data set (lossless WebP), e.g. to
  carry the training data to a remote GPU machine.
- ``colorize``: colorize NIR image files of any size (tiled, bounded memory) into 8-bit RGB
  PNGs; ``--demo`` colorizes the sample images bundled with the package.

Bad input (missing or unreadable files, damaged weights, unpairable data, outputs that already
exist, invalid values) ends with one line ``pyg-lecc: error: ...`` on stderr and exit code 2.
No output is ever written over an input file, whatever ``--overwrite`` says. Outputs are
checked before any work and created exclusively: without ``--overwrite``, a file that another
run writes in the meantime is not replaced either (the run stops with an error).

Example:
    .. code-block:: console

        $ pyg-lecc colorize scene_nir.tif -o colorized/ --weights default
        $ pyg-lecc evaluate --data ../shared/data/vcip2020 --weights runs/gnn/weights.safetensors \\
              --json runs/gnn/validation.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyg_lecc.nir.data import (
    find_pairs,
    load_pair,
    pack_dataset,
    read_nir,
    read_rgb,
    refuse_existing_outputs,
    write_file_atomic,
    write_rgb_png,
)
from pyg_lecc.nir.inference import (
    DEFAULT_CONTEXT,
    DEFAULT_SEARCH_WINDOW,
    DEFAULT_TILE,
    colorize,
    load_model,
    refuse_inputs_as_outputs,
    refuse_unwritable_folders,
    resolve_weights,
    sample_pairs,
)
from pyg_lecc.nir.metrics import METRIC_KEYS, evaluate_pair, summarize
from pyg_lecc.nir.models import list_models
from pyg_lecc.nir.training import (
    AMP_MODES,
    COMPILE_MODES,
    SCHEDULES,
    TrainConfig,
    limit_numba_threads,
    train,
)
from pyg_lecc.nir.training.signals import _honour_sigint

__all__ = ["build_parser", "main"]

PROG = "pyg-lecc"
EXIT_USAGE = 2
DEMO_OUT = "pyg-lecc-demo"
"""Output folder of ``colorize --demo`` when ``-o`` is not given."""

_COLUMNS = (
    ("psnr", "PSNR [dB]"),
    ("ssim", "SSIM"),
    ("ae_deg", "AE [deg]"),
    ("ae_img_rad", "AE img [rad]"),
)


# --------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {text}")
    return value


def _add_tiling(parser: argparse.ArgumentParser, tile: int) -> None:
    parser.add_argument(
        "--tile",
        type=_int_at_least(1),
        default=tile,
        help=f"side of the part of each tile that is kept (default: {tile})",
    )
    parser.add_argument(
        "--context",
        type=_int_at_least(0),
        default=DEFAULT_CONTEXT,
        help=f"pixels of context around each tile (default: {DEFAULT_CONTEXT})",
    )
    parser.add_argument(
        "--search-window",
        type=_int_at_least(0),
        default=DEFAULT_SEARCH_WINDOW,
        help=f"side of the kNN search window, 0 for whole tiles (default: {DEFAULT_SEARCH_WINDOW})",
    )
    parser.add_argument(
        "--ensemble",
        choices=("none", "flip"),
        default="none",
        help="test-time ensemble: flip also runs each tile mirrored left to right and averages "
        "(twice the time; default: none)",
    )


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="DIR", help="data set folder")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def _add_model_choice(parser: argparse.ArgumentParser, weights_required: bool) -> None:
    parser.add_argument(
        "--weights",
        required=weights_required,
        default=None if weights_required else "default",
        metavar="PATH|default",
        help="weights file, or 'default' for the weights shipped with the package"
        + ("" if weights_required else " (default: default)"),
    )
    parser.add_argument(
        "--model",
        choices=list_models(),
        default="nir-gnn",
        help="which default weights '--weights default' means; a weights file names its "
        "own model (default: nir-gnn)",
    )
    _add_device(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyg-lecc``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="NIR image colorization with NIR-GNN (graph-convolutional) and its CNN "
        "baseline.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train_command(sub)
    _add_pack_data_command(sub)
    _add_evaluate_command(sub)
    _add_colorize_command(sub)
    return parser


def _add_train_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Defaults are those of pyg_lecc.nir.training.TrainConfig (the paper's recipe).
    p = sub.add_parser(
        "train",
        help="train a model",
        description="Train NIR-GNN or the CNN "
        "baseline with the paper's recipe (Adam, MSE, 42x42 patches).",
    )
    _add_data(p)
    p.add_argument("--model", choices=list_models(), default="nir-gnn", help="(default: nir-gnn)")
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="output folder")
    for flag, kind, default, text in (
        ("--iters", _int_at_least(1), 300_000, "training iterations"),
        ("--batch-size", _int_at_least(1), 10, "patches per batch"),
        ("--patch", _int_at_least(1), 42, "side of the training patches"),
        ("--lr", _positive_float, 1e-4, "initial learning rate"),
        ("--lr-end", _positive_float, 1e-5, "final learning rate (exponential decay)"),
        ("--features", _int_at_least(3), 99, "width F (for cnn: the NIR-GNN width to match)"),
        ("--rank", _int_at_least(1), 11, "rank of the lightweight ECC"),
        ("--k", _int_at_least(1), 8, "non-local neighbours per pixel"),
        ("--layers-per-block", _int_at_least(1), 3, "graph layers per HPF/LPF block"),
        ("--seed", _int_at_least(0), 0, "random seed"),
        ("--val-every", _int_at_least(1), 1000, "validate every N iterations"),
        ("--ckpt-every", _int_at_least(1), 200, "checkpoint every N iterations"),
    ):
        p.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default:g})")
    _add_device(p)
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    p.add_argument(
        "--val-split",
        choices=("validation", "val", "train", "none"),
        default="validation",
        help="split to validate on, or none (default: validation)",
    )
    p.add_argument(
        "--threads", type=_int_at_least(1), default=None, help="CPU threads (default: all cores)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--register",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train on training pairs shifted into register and cropped to their overlap "
        "(default: on; validation pairs are never changed)",
    )
    _add_train_budget_options(p)
    _add_train_selection_options(p)
    p.set_defaults(handler=_cmd_train)


def _add_train_budget_options(p: argparse.ArgumentParser) -> None:
    """Schedule, time budget, starting weights and precision of ``train``."""
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="exp",
        help="learning-rate decay after the warm-up (default: exp, the paper's)",
    )
    p.add_argument(
        "--warmup", type=_int_at_least(0), default=0, help="linear warm-up iterations (default: 0)"
    )
    p.add_argument(
        "--time-budget",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="stop cleanly after this many seconds of training (checkpoint, weights, log)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="WEIGHTS",
        help="start from a weights file with a fresh optimiser (same architecture)",
    )
    p.add_argument(
        "--amp",
        choices=AMP_MODES,
        default="none",
        help="bfloat16 autocast of the training forward pass (default: none; TF32 is on "
        "on CUDA anyway)",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="none",
        help="torch.compile the training steps (default: none; reduce-overhead uses CUDA "
        "graphs; compiling takes tens of seconds per session)",
    )


def _add_train_selection_options(p: argparse.ArgumentParser) -> None:
    """Weight averaging and held-out selection of ``train``."""
    p.add_argument(
        "--ema",
        type=_fraction,
        default=None,
        metavar="DECAY",
        help="exponential moving average of the weights, e.g. 0.999, used for validation and "
        "the exported weights",
    )
    p.add_argument(
        "--bn-batches",
        type=_int_at_least(1),
        default=16,
        help="training batches on which the BatchNorm statistics of the --ema weights are "
        "recomputed before each validation (default: 16)",
    )
    p.add_argument(
        "--holdout",
        type=_int_at_least(0),
        default=0,
        help="training pairs held out (by seed) to select the exported weights (default: 0)",
    )
    p.add_argument(
        "--holdout-pairs",
        default=None,
        metavar="FILE|default",
        help="hold out the training pairs named in FILE (one per line) instead, whatever the "
        "seed; 'default': the committed selection pairs of the VCIP 2020 data",
    )
    p.add_argument(
        "--ema-bias-correction",
        action="store_true",
        help="correct the --ema average's bias towards the starting weights (as Adam's "
        "moments): for short continuations of trained weights",
    )


def _add_pack_data_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pack-data",
        help="write a compact, checksummed copy of a data set",
        description="Copy a data set's train and validation pairs (8-bit images) into OUT_DIR "
        "as lossless WebP (plain layout, about a fifth smaller than PNG) with a manifest of "
        "checksums of the decoded images; every command reads the pack like the original and "
        "checks it. The pack is built in a temporary folder next to OUT_DIR and moved into "
        "place only when complete.",
    )
    _add_data(p)
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="OUT_DIR",
        help="new pack folder (absent or empty), outside DIR",
    )
    p.set_defaults(handler=_cmd_pack_data)


def _add_evaluate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a model on a data set split",
        description="Colorize every NIR image of a split and compare it with the RGB ground "
        "truth: PSNR, SSIM, per-pixel angular error (degrees) and whole-image angular error "
        "(radians, the paper's AE).",
    )
    _add_data(p)
    p.add_argument(
        "--split",
        choices=("validation", "val", "train"),
        default="validation",
        help="(default: validation)",
    )
    _add_model_choice(p, weights_required=True)
    p.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    p.add_argument("--save-dir", type=Path, metavar="DIR", help="save the colorized PNGs")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    # 256x256 VCIP images fit in one tile: they are run whole.
    _add_tiling(p, tile=256)
    p.set_defaults(handler=_cmd_evaluate)


def _add_colorize_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "colorize",
        help="colorize NIR images",
        description="Colorize NIR images (PNG, JPEG or TIFF, 8 or 16 bit, any size) into "
        "OUT_DIR/<stem>.png (8-bit RGB). Large images are processed in overlapping tiles.",
    )
    p.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="NIR image files")
    p.add_argument("-o", "--out", type=Path, metavar="OUT_DIR", help="output folder")
    p.add_argument(
        "--demo",
        action="store_true",
        help=f"colorize the sample images bundled with the package (default -o: {DEMO_OUT})",
    )
    _add_model_choice(p, weights_required=False)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (without it, an output that exists, or that another "
        "run writes meanwhile, is an error)",
    )
    _add_tiling(p, tile=DEFAULT_TILE)
    p.set_defaults(handler=_cmd_colorize)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"invalid device {device!r}: {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available: CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available: MPS is not available")
    return dev


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    try:
        import resource
    except ImportError:  # not on Windows
        return "peak memory n/a"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024
    return f"peak RSS {peak_bytes / 2**20:.0f} MiB"


def _colorize_with_args(
    model: torch.nn.Module, nir: np.ndarray, args: argparse.Namespace, device: str
) -> np.ndarray:
    # The tiling options shared by `evaluate` and `colorize`.
    return colorize(
        model,
        nir,
        tile=args.tile,
        context=args.context,
        search_window=_search_window(args.search_window),
        device=device,
        ensemble=None if args.ensemble == "none" else args.ensemble,
    )


def _search_window(value: int) -> int | None:
    return value or None


def _format_row(name: str, metrics: dict[str, float], width: int) -> str:
    cells = [f"{metrics[key]:>{max(len(title), 8)}.4f}" for key, title in _COLUMNS]
    return f"{name:<{width}}  " + "  ".join(cells)


def _format_header(width: int) -> str:
    return f"{'image':<{width}}  " + "  ".join(
        f"{title:>{max(len(title), 8)}}" for _, title in _COLUMNS
    )


def _write_json(path: Path, payload: dict[str, Any], overwrite: bool) -> None:
    write_file_atomic(path, (json.dumps(payload, indent=2) + "\n").encode(), overwrite)


# --------------------------------------------------------------------------------------------
# Sub-commands
# --------------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    _honour_sigint()  # the trainer's kill -INT works from the start, whatever it inherited
    config = TrainConfig(
        data=args.data,
        out=args.out,
        model=args.model,
        features=args.features,
        rank=args.rank,
        k=args.k,
        layers_per_block=args.layers_per_block,
        iters=args.iters,
        batch_size=args.batch_size,
        patch=args.patch,
        lr=args.lr,
        lr_end=args.lr_end,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        val_every=args.val_every,
        ckpt_every=args.ckpt_every,
        val_split=args.val_split,
        threads=args.threads,
        progress=not args.no_progress,
        schedule=args.schedule,
        warmup=args.warmup,
        time_budget=args.time_budget,
        init_from=args.init_from,
        amp=args.amp,
        ema=args.ema,
        holdout=args.holdout,
        bn_batches=args.bn_batches,
        holdout_pairs=args.holdout_pairs,
        ema_bias_correction=args.ema_bias_correction,
        compile=args.compile,
        register=args.register,
    )
    if args.threads is not None:
        limit_numba_threads(args.threads)  # no idle Numba worker spinning on another core
    summary = train(config)
    stopped = " (time budget reached)" if summary.get("stopped") == "time_budget" else ""
    print(
        f"training done: {summary.get('iterations')} of {args.iters} iterations{stopped}, "
        f"run folder {args.out}"
    )
    for key in ("weights", "checkpoint", "log"):
        if summary.get(key):
            print(f"  {key}: {summary[key]}")
    val = summary.get("val")
    if isinstance(val, dict) and all(k in val for k in METRIC_KEYS):
        width = max(len("validation"), 8)
        print(_format_header(width))
        print(_format_row("validation", val, width))
    return 0


def _cmd_pack_data(args: argparse.Namespace) -> int:
    result = pack_dataset(args.data, args.out)
    counts = ", ".join(f"{n} {split}" for split, n in result["pairs"].items())
    print(
        f"packed {counts} pairs into {args.out}: {result['bytes'] / 2**20:.1f} MiB "
        f"(source images {result['source_bytes'] / 2**20:.1f} MiB), checked by decoding"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    device = _check_device(args.device)
    pairs = find_pairs(args.data, args.split)
    weights = resolve_weights(args.weights, args.model)
    # Refuse before any work: no input is ever written over, and an existing JSON or PNG is
    # never replaced without --overwrite.
    outputs: list[Path] = [] if args.json is None else [args.json]
    if args.save_dir is not None:
        outputs += [args.save_dir / f"{p.name}.png" for p in pairs]
    inputs = [weights, *(p.nir_path for p in pairs), *(p.rgb_path for p in pairs)]
    refuse_inputs_as_outputs(outputs, inputs)
    refuse_existing_outputs(outputs, args.overwrite)
    refuse_unwritable_folders(outputs)
    model, name = load_model(weights, args.model, device)

    print(f"{name} ({weights}) on {len(pairs)} {args.split} images of {args.data}")
    width = max(len("mean"), *(len(p.name) for p in pairs))
    print(_format_header(width))
    per_image: list[dict[str, Any]] = []
    failed: list[str] = []
    for pair in pairs:
        try:
            nir, rgb = load_pair(pair)
            pred = _colorize_with_args(model, nir, args, device)
        except ValueError as err:  # a bad pair: finish the others, report all bad ones at the end
            failed.append(f"{pair.name} ({err})")
            print(f"{pair.name:<{width}}  failed", flush=True)
            continue
        metrics = evaluate_pair(pred, rgb)
        per_image.append({"name": pair.name, **metrics})
        print(_format_row(pair.name, metrics, width), flush=True)
        if args.save_dir is not None:
            write_rgb_png(args.save_dir / f"{pair.name}.png", pred, overwrite=args.overwrite)
    if failed:
        # A mean over part of the split would pass for the split's: none is reported.
        written = (
            f"; the colorized images of the other {len(per_image)} were written to {args.save_dir}"
            if args.save_dir is not None and per_image
            else ""
        )
        raise ValueError(
            f"{len(failed)} of {len(pairs)} pairs could not be evaluated, so no mean and no JSON "
            f"were produced{written}: " + "; ".join(failed)
        )
    mean = summarize(per_image)
    print(_format_row("mean", mean, width))

    if args.json is not None:
        payload = {
            "model": name,
            "weights": str(weights),
            "split": args.split,
            **mean,
            "num_images": len(per_image),
            "tile": args.tile,
            "context": args.context,
            "search_window": _search_window(args.search_window),
            "ensemble": args.ensemble,
            "per_image": per_image,
        }
        _write_json(args.json, payload, args.overwrite)
        print(f"wrote {args.json}")
    return 0


def _cmd_colorize(args: argparse.Namespace) -> int:
    truth: dict[Path, Path] = {}
    if args.demo:
        if args.inputs:
            raise ValueError("--demo colorizes the bundled samples: give no INPUT files")
        pairs = sample_pairs()
        inputs = [p.nir_path for p in pairs]
        truth = {p.nir_path: p.rgb_path for p in pairs}
        out_dir = args.out if args.out is not None else Path(DEMO_OUT)
    else:
        if not args.inputs:
            raise ValueError("no INPUT image given (or use --demo)")
        if args.out is None:
            raise ValueError("the output folder -o/--out OUT_DIR is required")
        inputs, out_dir = args.inputs, args.out
    device = _check_device(args.device)

    # All checks before any work, so a refused run writes nothing.
    outputs: dict[Path, Path] = {}
    for src in inputs:
        if src.is_dir():
            raise ValueError(f"input image {src} is a directory, not an image file")
        if not src.is_file():
            raise FileNotFoundError(f"input image not found: {src}")
        dst = out_dir / f"{src.stem}.png"
        if dst in outputs:
            raise ValueError(f"{outputs[dst]} and {src} would both be written to {dst}")
        outputs[dst] = src
    weights = resolve_weights(args.weights, args.model)
    refuse_inputs_as_outputs(outputs, [weights, *inputs, *truth.values()])
    refuse_existing_outputs(outputs, args.overwrite)
    refuse_unwritable_folders(outputs)
    model, name = load_model(weights, args.model, device)
    print(f"{name} ({weights}) on {device}")

    for dst, src in outputs.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        nir = read_nir(src)
        rgb = _colorize_with_args(model, nir, args, device)
        seconds = time.perf_counter() - start
        write_rgb_png(dst, rgb, overwrite=args.overwrite)
        height, width = nir.shape
        line = f"{src} -> {dst}  {height}x{width} (height x width)  {seconds:.2f} s  "
        line += _peak_memory(device)
        if src in truth:
            # Demo samples come with their ground truth: show how close the colors are.
            metrics = evaluate_pair(rgb, read_rgb(truth[src]))
            line += f"  PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.3f}"
        print(line, flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run ``pyg-lecc`` with ``argv`` (default: ``sys.argv[1:]``).

    Args:
        argv: Command-line arguments without the program name.

    Returns:
        The exit code: 0 on success, 2 for bad usage or bad input (a one-line
        ``pyg-lecc: error: ...`` message on stderr), 130 when interrupted.

    Example:
        >>> main(["colorize", "scene_nir.png", "-o", "out"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.handler(args))
    except (OSError, ValueError) as err:
        # Bad input: missing / unreadable / existing files, unpairable data, invalid values
        # (ImageReadError and PairingError are ValueErrors). One line, no traceback.
        message = str(err) if str(err) else type(err).__name__
        if isinstance(err, OSError) and err.filename is not None and err.strerror:
            message = f"{err.strerror}: {err.filename}"
        print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
