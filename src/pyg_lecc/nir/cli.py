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
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyg_lecc.nir.config import NIRGNNConfig, option_fields
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
from pyg_lecc.nir.hub import list_models
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
from pyg_lecc.nir.training import (
    AMP_MODES,
    COMPILE_MODES,
    SCHEDULES,
    TrainConfig,
    honour_sigint,
    limit_numba_threads,
    stored_settings,
    train,
)

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


def _add_tiling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile",
        type=_int_at_least(1),
        default=DEFAULT_TILE,
        help=f"side of the part of each tile that is kept (default: {DEFAULT_TILE}: with the "
        "context, 256x256 images run whole; 147 gives the reference implementation's tiles)",
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


def _add_data(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--data", required=required, type=Path, metavar="DIR", help="data set folder"
    )


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


def build_parser(train_defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``pyg-lecc``.

    Args:
        train_defaults (dict, optional): Defaults of ``train``'s destinations that replace
            the built-in ones (the settings of a ``--config`` file). (default: :obj:`None`)
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="NIR image colorization with NIR-GNN (graph-convolutional) and its CNN "
        "baseline.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train_command(sub, train_defaults or {})
    _add_pack_data_command(sub)
    _add_evaluate_command(sub)
    _add_colorize_command(sub)
    return parser


def _add_train_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], defaults: dict[str, Any]
) -> None:
    # Destinations are the names of TrainConfig's fields (and of NIRGNNConfig's for the
    # architecture), so that _train_config maps them generically; defaults are TrainConfig's.
    p = sub.add_parser(
        "train",
        help="train a model",
        description="Train NIR-GNN or the CNN "
        "baseline with the paper's recipe (Adam, MSE, 42x42 patches). With --model cnn, the "
        "architecture options describe the NIR-GNN whose parameter count the CNN matches.",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="read the settings from FILE, a JSON object of the fields of "
        "pyg_lecc.nir.training.TrainConfig (TrainConfig.to_dict(); missing ones take their "
        "defaults); options given on the command line override it",
    )
    _add_data(p, required=False)
    p.add_argument("--model", choices=list_models(), default="nir-gnn", help="(default: nir-gnn)")
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="output folder")
    for flag, kind, default, text in (
        ("--iters", _int_at_least(1), 300_000, "training iterations"),
        ("--batch-size", _int_at_least(1), 10, "patches per batch"),
        ("--patch", _int_at_least(1), 42, "side of the training patches"),
        ("--lr", _positive_float, 1e-4, "initial learning rate"),
        ("--lr-end", _positive_float, 1e-5, "final learning rate (exponential decay)"),
    ):
        p.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default:g})")
    _add_arch_options(p)
    for flag, kind, default, text in (
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
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--register",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train on training pairs shifted into register and cropped to their overlap "
        "(default: on; validation pairs are never changed)",
    )
    _add_train_budget_options(p)
    _add_train_selection_options(p)
    p.set_defaults(handler=_cmd_train, **defaults)


def _add_arch_options(p: argparse.ArgumentParser) -> None:
    """One option of ``train`` per field of :func:`~pyg_lecc.nir.config.option_fields`, with
    its type, default, check and help (``--layers-per-block`` for ``layers_per_block``)."""
    for f in option_fields():
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=f"{f.metadata['help']} (default: {'on' if f.default else 'off'})",
            )
        else:
            p.add_argument(
                flag,
                type=_checked_value(f),
                default=f.default,
                help=f"{f.metadata['help']} (default: {f.default:g})",
            )


def _checked_value(f: dataclasses.Field) -> Callable[[str], Any]:
    # Parses an option's text as the field's type (int or float) and applies its check.
    kind = {"int": int, "float": float}[str(f.type)]
    expected = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        must = f.metadata["check"](value)
        if must is not None:
            raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
        return value

    return parse


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
    _add_tiling(p)  # as colorize: the 256x256 VCIP images run whole
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
    _add_tiling(p)
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


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of ``train``'s parsed options, whose destinations are the
    fields' names (those of the architecture gathered into ``arch``)."""
    values = vars(args)
    if values.get("data") is None or values.get("out") is None:
        raise ValueError(
            "train needs --data and --out, on the command line or in the --config file"
        )
    arch = {f.name: values[f.name] for f in fields(NIRGNNConfig) if f.name in values}
    settings = {f.name: values[f.name] for f in fields(TrainConfig) if f.name in values}
    return TrainConfig(**settings, arch=NIRGNNConfig(**arch))


def _config_file_defaults(path: Path) -> dict[str, Any]:
    """The settings of a ``train --config`` file as defaults of ``train``'s destinations."""
    try:
        stored = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"the --config file {path} is not valid JSON: {err}") from err
    if not isinstance(stored, dict):
        raise ValueError(f"the --config file {path} does not hold a JSON object")
    # A file is written whole, by hand or by a tool of this version: no legacy values.
    settings = stored_settings(stored, path, legacy=False)
    return {**settings.pop("arch").to_dict(), **settings}


def _cmd_train(args: argparse.Namespace) -> int:
    honour_sigint()  # the trainer's kill -INT works from the start, whatever it inherited
    config = _train_config(args)
    if config.threads is not None:
        limit_numba_threads(config.threads)  # no idle Numba worker spinning on another core
    summary = train(config)
    stopped = " (time budget reached)" if summary.get("stopped") == "time_budget" else ""
    print(
        f"training done: {summary.get('iterations')} of {config.iters} iterations{stopped}, "
        f"run folder {config.out}"
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
        if getattr(args, "config", None) is not None:
            # Parsed again with the file's settings as defaults: given options override them.
            args = build_parser(_config_file_defaults(args.config)).parse_args(argv)
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
