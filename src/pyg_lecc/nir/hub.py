"""The registered models and their weights: the entrypoints :func:`nir_gnn` and
:func:`cnn_baseline` (by name through :func:`get_model`), weights files (:func:`save_weights`,
:func:`load_weights`, :func:`model_from_weights`, with every check of a file's header and
tensors), the shipped weights (:func:`default_weights_path`) and their model cards
(:func:`model_card`). The architectures themselves are in :mod:`pyg_lecc.nir.models`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyg_lecc.io.weight_files import read_weights_file, write_weights_file
from pyg_lecc.nir.config import NIRGNNConfig
from pyg_lecc.nir.models import NIRGNN, matched_cnn_features

__all__ = [
    "cnn_baseline",
    "default_weights_path",
    "get_model",
    "list_models",
    "load_weights",
    "model_card",
    "model_from_weights",
    "nir_gnn",
    "save_weights",
    "state_mismatch",
]

# The non_local flag of each registered model: a label that disagrees would let NIR-GNN
# weights load through cnn_baseline (and the reverse).
_NON_LOCAL = {"nir-gnn": True, "cnn": False}
_KINDS = {True: "NIR-GNN", False: "CNN baseline"}
# What a weights file does not fix: how the kNN graph is searched.
_RUNTIME = ("search_window", "graph_backend")


def _weights_dir() -> Path:
    return Path(str(resources.files("pyg_lecc.nir") / "weights"))


def nir_gnn(*, weights: str | Path | None = None, **kwargs: Any) -> NIRGNN:
    r"""NIR-GNN (paper defaults: :math:`F=99`, :math:`r=11`, :math:`\delta=10`, :math:`k=8`).

    Args:
        weights (str or Path, optional): :obj:`None` (random initialisation),
            :obj:`"default"` (the weights shipped with the package, see
            ``weights/MODEL_CARD.md``) or the path of a weights file. (default: :obj:`None`)
        **kwargs (optional): :class:`~pyg_lecc.nir.models.NIRGNN` arguments (ignored for the
            architecture when weights are given: the weights file fixes it).

    Returns:
        The model (in eval mode when loaded from weights).

    Example:
        >>> nir_gnn(features=12, rank=2).config()["non_local"]
        True
    """
    return _build("nir-gnn", weights, non_local=True, **kwargs)


def cnn_baseline(*, weights: str | Path | None = None, **kwargs: Any) -> NIRGNN:
    r"""The CNN baseline of Table I: NIR-GNN without the non-local path.

    Args:
        weights (str or Path, optional): As for :func:`nir_gnn`. (default: :obj:`None`)
        **kwargs (optional): :class:`~pyg_lecc.nir.models.NIRGNN` arguments. Without
            :obj:`features`, the width is chosen by :func:`matched_cnn_features
            <pyg_lecc.nir.models.matched_cnn_features>` to match a NIR-GNN of width
            :obj:`match_features` (default :obj:`99`) with the same other arguments.

    Returns:
        The model (in eval mode when loaded from weights).

    Example:
        >>> cnn_baseline(match_features=12, rank=2).config()["features"]
        12
    """
    if weights is None and "features" not in kwargs:
        match = kwargs.pop("match_features", 99)
        arch = {k: v for k, v in kwargs.items() if k not in _RUNTIME}
        kwargs["features"] = matched_cnn_features(match, **arch)
    kwargs.pop("match_features", None)
    return _build("cnn", weights, non_local=False, **kwargs)


_REGISTRY: dict[str, Callable[..., NIRGNN]] = {"nir-gnn": nir_gnn, "cnn": cnn_baseline}


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`.

    Example:
        >>> list_models()
        ['cnn', 'nir-gnn']
    """
    return sorted(_REGISTRY)


def get_model(name: str, *, weights: str | Path | None = None, **kwargs: Any) -> NIRGNN:
    """Builds a registered model by name.

    Args:
        name (str): :obj:`"nir-gnn"` or :obj:`"cnn"` (:func:`list_models`).
        weights (str or Path, optional): As for :func:`nir_gnn`. (default: :obj:`None`)
        **kwargs (optional): Arguments of the model's entrypoint (:func:`nir_gnn`,
            :func:`cnn_baseline`).

    Raises:
        ValueError: ``name`` is not registered.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return _REGISTRY[name](weights=weights, **kwargs)


def default_weights_path(name: str) -> Path:
    """Path of the weights shipped for model :obj:`name`.

    Example:
        >>> from pyg_lecc.nir.hub import default_weights_path
        >>> default_weights_path("nir-gnn").name
        'nir-gnn.safetensors'
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return _weights_dir() / f"{name}.safetensors"


def _build(name: str, weights: str | Path | None, **kwargs: Any) -> NIRGNN:
    if weights is None:
        return NIRGNN(**kwargs)
    path = default_weights_path(name) if str(weights) == "default" else Path(weights)
    runtime = {k: kwargs[k] for k in _RUNTIME if k in kwargs}
    model, stored_name = model_from_weights(path, **runtime)
    if stored_name != name:
        raise ValueError(f"{path} holds weights of model {stored_name!r}, not {name!r}")
    return model


def load_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Loads a weights file written by :func:`save_weights` (safetensors), or an earlier
    ``torch.save`` archive, without running any code (:mod:`pyg_lecc.io.weight_files`).

    Checked here: the hashes of the tensors and of the header, the config's keys and values,
    the model name against the config, and the tensors' types and values. Whether the tensors
    fit the config is checked by :func:`model_from_weights`, before it builds the model.

    The header of a safetensors file written before headers were hashed (the weights shipped
    so far among them) is compared instead with the copies of ``model`` and ``config`` that
    the file's training metadata and the model card next to it (``<stem>.json``) hold: an
    edit of the header alone is refused. Such a file with neither copy is taken as it is;
    its tensors still have to fit its config.

    Returns:
        The model name, architecture config and (when stored) training metadata, and the
        state dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a directory, or not a valid weights file: truncated or of
            another format, tensors or a header that do not match the stored hashes
            (safetensors) or CRC-32 checksums (a flipped bit), objects other than tensors
            and plain values, missing entries, an unregistered model name, an unknown or
            invalid config value, a model name that the config contradicts, or a tensor
            that is not finite. The message names the file and the problem.
    """
    path = Path(path)
    meta, state = read_weights_file(path, lambda header: _check_unhashed_header(path, header))
    name = meta.get("model")
    if name not in _REGISTRY:
        raise ValueError(f"{path} holds weights of unknown model {name!r}; known: {list_models()}")
    arch = NIRGNNConfig.from_dict(meta.get("config"), source=path)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) and _is_plain(v) for k, v in state.items()
    ):
        raise ValueError(
            f"{path} is damaged: 'state_dict' is not a mapping of names to dense real CPU tensors"
        )
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path} is damaged: tensor {key!r} holds NaN or infinite values")
    if arch.non_local != _NON_LOCAL[name]:
        raise ValueError(
            f"{path} is damaged: it is labelled {name!r}, but its config describes a "
            f"{_KINDS[arch.non_local]} (non_local={arch.non_local})"
        )
    loaded = {"model": name, "config": arch.to_dict()}
    if isinstance(meta.get("training"), dict):
        loaded["training"] = meta["training"]
    return loaded, state


def _check_unhashed_header(path: Path, meta: dict[str, Any]) -> None:
    # Older files: the header's model and config against their other copies (see load_weights).
    # An unreadable model card is no copy: it is not part of the weights file.
    copies = [("its training metadata", meta.get("training"))]
    card = path.with_suffix(".json")
    with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
        copies.append((f"its model card {card}", json.loads(card.read_text())))
    for where, copy in copies:
        for key in ("model", "config"):
            if isinstance(copy, dict) and key in copy and copy[key] != meta.get(key):
                raise ValueError(
                    f"{path} is damaged: the {key} in its header, {meta.get(key)!r}, differs "
                    f"from {where}, {copy[key]!r} (its header predates header hashes, so "
                    f"these copies are compared)"
                )


def _check_tensors_fit(path: Path, arch: NIRGNNConfig, state: dict[str, Tensor]) -> None:
    with torch.device("meta"):
        expected = NIRGNN(arch).state_dict()
    mismatch = state_mismatch(expected, state)
    if mismatch:
        raise ValueError(
            f"{path} is damaged: its tensors do not match its config {arch.to_dict()}: {mismatch}"
        )


def _is_plain(tensor: Tensor) -> bool:
    # What save_weights writes; others (meta, sparse, complex) fail or mislead later.
    return (
        tensor.layout == torch.strided and tensor.device.type == "cpu" and not tensor.is_complex()
    )


def save_weights(
    model: NIRGNN, name: str, path: str | Path, training: dict[str, Any] | None = None
) -> None:
    """Saves a model's weights as a safetensors file (``.safetensors`` by convention), with
    its name, architecture config and optional training metadata in the header, atomically.

    Args:
        model: The model.
        name: Its registered name (:obj:`"nir-gnn"` or :obj:`"cnn"`).
        path: Destination file.
        training: JSON-serialisable training metadata (iterations, hardware, scores, ...),
            returned by :func:`load_weights` as ``"training"``.

    Raises:
        ValueError: ``name`` is not registered, or names the other kind of model (a CNN
            baseline saved as :obj:`"nir-gnn"`).
    """
    if name not in _REGISTRY:
        raise ValueError(f"save_weights: unknown model {name!r}; available: {list_models()}")
    non_local = model.arch.non_local
    if non_local != _NON_LOCAL[name]:  # load_weights would refuse the file
        raise ValueError(
            f"save_weights: the model is a {_KINDS[non_local]} (non_local={non_local}), not "
            f"a {name!r} model"
        )
    metadata: dict[str, Any] = {"model": name, "config": model.config()}
    if training is not None:
        metadata["training"] = training
    write_weights_file(path, model.state_dict(), metadata)


def model_from_weights(path: str | Path, **runtime: Any) -> tuple[NIRGNN, str]:
    """Builds the model a weights file describes, loaded in eval mode (one read of the file).

    Args:
        path (str or Path): A file written by :func:`save_weights`.
        **runtime (optional): ``search_window`` and ``graph_backend``, which the file does
            not fix.

    Returns:
        The model and its registered name (:obj:`"nir-gnn"` or :obj:`"cnn"`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a valid weights file (see :func:`load_weights`), or its
            tensors do not match its config. The message names the file and the problem.
    """
    meta, state = load_weights(path)
    arch = NIRGNNConfig(**meta["config"])
    # Compared on the meta device first, which allocates nothing: a small file whose header
    # claims "features": 30000 would otherwise build a model of several GB before failing.
    _check_tensors_fit(Path(path), arch, state)
    model = NIRGNN(arch, **runtime)
    model.load_state_dict(state)
    return model.eval(), str(meta["model"])


def state_mismatch(expected: dict[str, Tensor], state: dict[str, Tensor]) -> str:
    """How a state dict differs from the one a model expects, in one short line (instead of
    :meth:`~torch.nn.Module.load_state_dict`'s error, which lists every key).

    Args:
        expected (dict): The model's state dict (on any device, the meta one included).
        state (dict): The state dict to load.

    Returns:
        The missing, unexpected and wrongly shaped or typed tensors (three names of each at
        most), or an empty string when ``state`` fits.

    Example:
        >>> from pyg_lecc.nir.hub import state_mismatch
        >>> state = NIRGNN(features=6, rank=2, k=4, layers_per_block=1).state_dict()
        >>> state_mismatch(state, {k: v for k, v in state.items() if k != "last.bias"})
        'missing tensors (1): last.bias'
    """

    def some(names: list[str]) -> str:
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        return ", ".join(names[:3]) + more

    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [
        f"{key} {_describe(state[key])} instead of {_describe(tensor)}"
        for key, tensor in expected.items()
        if key in state
        and (
            state[key].shape != tensor.shape
            or state[key].is_floating_point() != tensor.is_floating_point()
        )
    ]
    problems = [
        f"{what} ({len(names)}): {some(names)}"
        for what, names in (
            ("missing tensors", missing),
            ("unexpected tensors", unexpected),
            ("tensors of the wrong shape or type", wrong),
        )
        if names
    ]
    return "; ".join(problems)


def _describe(tensor: Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}"


def model_card(name: str) -> dict[str, Any]:
    """Metadata of the shipped weights of :obj:`name` (command, schedule, metrics).

    Raises:
        FileNotFoundError: No model card is shipped for :obj:`name`.
    """
    path = _weights_dir() / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model card for {name!r} at {path}")
    return json.loads(path.read_text())
