"""NIR-GNN and its CNN baseline, from `"NIR Image Colorization with Graph-Convolutional
Neural Networks" <https://doi.org/10.1109/VCIP49819.2020.9301839>`_ (Valsesia, Fracastoro,
Magli, VCIP 2020), assembled from the package's generic parts: :class:`LightweightECC`, the
image graph builder :class:`ImageKNNGraph` and 3x3 convolutions.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyg_lecc.conv import LightweightECC
from pyg_lecc.graph import ImageKNNGraph, image_to_nodes, nodes_to_image
from pyg_lecc.io.weight_files import read_weights_file, write_weights_file

_LEAKY_SLOPE = 0.2


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    # Reflect padding, as in the authors' reference code: no dark frame at image borders.
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        padding_mode="reflect",
        bias=False,
    )
    nn.init.xavier_normal_(conv.weight)
    return conv


class LocalNonLocalConv(nn.Module):
    r"""The graph-convolutional layer of NIR-GNN (equation (1) of the paper): a local 3x3
    convolution and a non-local :class:`~pyg_lecc.LightweightECC` over an image graph.

    .. math::
        \mathbf{h}'_i = \tfrac{1}{2}\big(\mathbf{h}^{L}_i + \mathbf{h}^{NL}_i\big) + \mathbf{b}.

    With :obj:`non_local=False` it is a plain 3x3 convolution plus bias (the CNN baseline).

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        rank (int, optional): Rank of :class:`~pyg_lecc.LightweightECC`. (default: :obj:`11`)
        delta (float, optional): Edge-attention decay. (default: :obj:`10.0`)
        circulant_stride (int or (int, int), optional): Circulant stride(s) of the operator.
            (default: :obj:`None`)
        non_local (bool, optional): Whether the non-local path exists. (default: :obj:`True`)

    Shapes:
        - **input:** feature maps :math:`(B, C_{in}, H, W)`, :obj:`edge_index`
          :math:`(2, |\mathcal{E}|)` over the :math:`B H W` pixels (ignored when
          :obj:`non_local=False`)
        - **output:** feature maps :math:`(B, C_{out}, H, W)`

    Example:
        >>> layer = LocalNonLocalConv(6, 6, rank=2)
        >>> x = torch.randn(1, 6, 8, 8)
        >>> layer(x, image_knn_graph(x, k=4)).shape
        torch.Size([1, 6, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int = 11,
        delta: float = 10.0,
        circulant_stride: int | tuple[int, int] | None = None,
        non_local: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.non_local = non_local
        self.local = _conv(in_channels, out_channels, 3)
        self.ecc = (
            LightweightECC(
                in_channels,
                out_channels,
                rank=rank,
                delta=delta,
                circulant_stride=circulant_stride,
                bias=False,
            )
            if non_local
            else None
        )
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, edge_index: Tensor | None) -> Tensor:
        out = self.local(x)
        if self.ecc is not None:
            if edge_index is None:
                raise ValueError("a non-local layer needs an 'edge_index'")
            B, _, H, W = x.shape
            non_local = self.ecc(image_to_nodes(x), edge_index)
            out = (out + nodes_to_image(non_local, B, H, W)) / 2
        return out + self.bias.view(1, -1, 1, 1)


class _NormAct(nn.Sequential):
    def __init__(self, channels: int) -> None:
        super().__init__(nn.BatchNorm2d(channels), nn.LeakyReLU(_LEAKY_SLOPE))


class _GraphStack(nn.Module):
    # Graph layers sharing one graph built from their input, each followed by BN + leaky ReLU.
    def __init__(self, channels: int, num_layers: int, **layer_kwargs: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            LocalNonLocalConv(channels, channels, **layer_kwargs) for _ in range(num_layers)
        )
        self.norms = nn.ModuleList(_NormAct(channels) for _ in range(num_layers))

    def forward(self, x: Tensor, graph: ImageKNNGraph | None) -> Tensor:
        edge_index = graph(x) if graph is not None else None
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = norm(layer(x, edge_index))
        return x


class _Branch(nn.Module):
    # Multiscale pre-processing: three kxk convolutions, then one graph layer.
    def __init__(self, channels: int, kernel_size: int, **layer_kwargs: Any) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            _conv(1, channels, kernel_size),
            _NormAct(channels),
            _conv(channels, channels, kernel_size),
            _NormAct(channels),
            _conv(channels, channels, kernel_size),
            _NormAct(channels),
        )
        self.graph_layers = _GraphStack(channels, 1, **layer_kwargs)

    def forward(self, x: Tensor, graph: ImageKNNGraph | None) -> Tensor:
        return self.graph_layers(self.convs(x), graph)


class _Block(nn.Module):
    # HPF / LPF block: a 3x3 convolution, then three graph layers sharing its graph.
    def __init__(self, channels: int, num_layers: int, **layer_kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(channels, channels, 3), _NormAct(channels))
        self.graph_layers = _GraphStack(channels, num_layers, **layer_kwargs)

    def forward(self, x: Tensor, graph: ImageKNNGraph | None) -> Tensor:
        return self.graph_layers(self.conv(x), graph)


class NIRGNN(nn.Module):
    r"""NIR-GNN: colorizes a one-channel near-infrared image into RGB.

    Multiscale pre-processing (three branches of 3x3, 5x5 and 7x7 convolutions with
    :math:`F/3` features, each closed by a graph layer), an HPF block and two LPF blocks
    (a 3x3 convolution and three graph layers sharing the kNN graph of its output), combined
    as in an unrolled proximal gradient method (:math:`\mathbf{s}_i = \beta_i
    \mathbf{h}_{HPF} + (1 - \alpha_i) \mathbf{h}`, :math:`\mathbf{h} \leftarrow
    \mathrm{LPF}_i(\mathbf{s}_i) + \mathbf{s}_i`), a last graph layer to RGB, and a global
    residual: the output is the NIR image on three channels plus the predicted difference.
    Every graph layer is a :class:`LocalNonLocalConv`; with :obj:`non_local=False` the same
    code builds the CNN baseline of the paper's Table I.

    Args:
        features (int, optional): Width :math:`F` (a multiple of 3). (default: :obj:`99`)
        rank (int, optional): Rank :math:`r` of the operator. (default: :obj:`11`)
        delta (float, optional): Edge-attention decay :math:`\delta`. (default: :obj:`10.0`)
        k (int, optional): Non-local neighbours per pixel. (default: :obj:`8`)
        non_local (bool, optional): :obj:`False` gives the CNN baseline. (default: :obj:`True`)
        layers_per_block (int, optional): Graph layers per HPF/LPF block.
            (default: :obj:`3`)
        search_window (int, optional): kNN search window (:obj:`None`: whole input, as in
            training on patches; full images use 49 through :mod:`pyg_lecc.nir.inference`).
            (default: :obj:`None`)
        graph_backend (str, optional): Backend of :func:`~pyg_lecc.image_knn_graph`.
            (default: :obj:`"auto"`)

    Shapes:
        - **input:** NIR images :math:`(B, 1, H, W)` in :math:`[0, 1]`
        - **output:** RGB images :math:`(B, 3, H, W)`

    Example:
        >>> model = NIRGNN(features=12, rank=2, k=4).eval()
        >>> model(torch.rand(1, 1, 16, 16)).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(
        self,
        features: int = 99,
        rank: int = 11,
        delta: float = 10.0,
        k: int = 8,
        non_local: bool = True,
        layers_per_block: int = 3,
        search_window: int | None = None,
        graph_backend: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(features, int) or features < 3 or features % 3 != 0:
            raise ValueError(f"'features' must be a positive multiple of 3, got {features!r}")
        self.features = features
        self.rank = rank
        self.delta = delta
        self.k = k
        self.non_local = non_local
        self.layers_per_block = layers_per_block
        self.graph = ImageKNNGraph(k=k, search_window=search_window, backend=graph_backend)

        third = features // 3
        common = dict(rank=rank, delta=delta, non_local=non_local)
        self.branches = nn.ModuleList(
            _Branch(third, size, circulant_stride=third, **common) for size in (3, 5, 7)
        )
        self.hpf = _Block(features, layers_per_block, circulant_stride=third, **common)
        self.lpf = nn.ModuleList(
            _Block(features, layers_per_block, circulant_stride=third, **common) for _ in range(2)
        )
        self.alpha = nn.Parameter(torch.full((2,), 0.5))
        self.beta = nn.Parameter(torch.full((2,), 0.5))
        self.last = LocalNonLocalConv(features, 3, circulant_stride=(third, 3), **common)

    def config(self) -> dict[str, Any]:
        """The constructor arguments that define the architecture (stored with weights)."""
        return {
            "features": self.features,
            "rank": self.rank,
            "delta": self.delta,
            "k": self.k,
            "non_local": self.non_local,
            "layers_per_block": self.layers_per_block,
        }

    def forward(self, nir: Tensor) -> Tensor:
        if nir.dim() != 4 or nir.size(1) != 1:
            raise ValueError(f"expected NIR images of shape (B, 1, H, W), got {tuple(nir.shape)}")
        graph = self.graph if self.non_local else None
        h = torch.cat([branch(nir, graph) for branch in self.branches], dim=1)
        h_hpf = self.hpf(h, graph)
        for i, block in enumerate(self.lpf):
            s = self.beta[i] * h_hpf + (1 - self.alpha[i]) * h
            h = block(s, graph) + s
        edge_index = graph(h) if graph is not None else None
        return nir.expand(-1, 3, -1, -1) + self.last(h, edge_index)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_cnn_features(gnn_features: int = 99, **kwargs: Any) -> int:
    """Width of the CNN baseline whose parameter count is closest to that of a NIR-GNN of
    width :obj:`gnn_features` (the paper compares both at roughly equal size).

    Example:
        >>> matched_cnn_features(12, rank=2)
        12
    """
    kwargs = {k: v for k, v in kwargs.items() if k != "non_local"}
    with torch.device("meta"):
        target = num_parameters(NIRGNN(gnn_features, non_local=True, **kwargs))
        candidates = range(3, 4 * gnn_features + 4, 3)
        counts = {f: num_parameters(NIRGNN(f, non_local=False, **kwargs)) for f in candidates}
    return min(counts, key=lambda f: abs(counts[f] - target))


def _weights_dir() -> Path:
    return Path(str(resources.files("pyg_lecc.nir") / "weights"))


# The architecture a weights file stores (NIRGNN.config()), with the type of each value. All
# are required: k and delta shape no tensor, so a missing one would silently load a wrong model.
_CONFIG_TYPES: dict[str, type] = {
    "features": int,
    "rank": int,
    "delta": float,
    "k": int,
    "non_local": bool,
    "layers_per_block": int,
}


# The non_local flag of each registered model: a label that disagrees would let NIR-GNN
# weights load through cnn_baseline (and the reverse).
_NON_LOCAL = {"nir-gnn": True, "cnn": False}
_KINDS = {True: "NIR-GNN", False: "CNN baseline"}


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
    config = _check_config(path, meta.get("config"))
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) and _is_plain(v) for k, v in state.items()
    ):
        raise ValueError(
            f"{path} is damaged: 'state_dict' is not a mapping of names to dense real CPU tensors"
        )
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path} is damaged: tensor {key!r} holds NaN or infinite values")
    if config["non_local"] != _NON_LOCAL[name]:
        raise ValueError(
            f"{path} is damaged: it is labelled {name!r}, but its config describes a "
            f"{_KINDS[config['non_local']]} (non_local={config['non_local']})"
        )
    loaded = {"model": name, "config": dict(config)}
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


def _check_tensors_fit(path: Path, config: dict[str, Any], state: dict[str, Tensor]) -> None:
    try:
        with torch.device("meta"):
            expected = NIRGNN(**config).state_dict()
    except ValueError as err:
        raise ValueError(f"{path} is damaged: its config {config} is invalid: {err}") from err
    mismatch = _state_mismatch(expected, state)
    if mismatch:
        raise ValueError(
            f"{path} is damaged: its tensors do not match its config {config}: {mismatch}"
        )


def _is_plain(tensor: Tensor) -> bool:
    # What save_weights writes; others (meta, sparse, complex) fail or mislead later.
    return (
        tensor.layout == torch.strided and tensor.device.type == "cpu" and not tensor.is_complex()
    )


def _check_config(path: Path, config: object) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ValueError(f"{path} is damaged: 'config' is not a dict, got {type(config).__name__}")
    unknown = sorted(map(str, config.keys() - _CONFIG_TYPES.keys()))
    missing = sorted(_CONFIG_TYPES.keys() - config.keys())
    if unknown or missing:
        problem = f"unknown config key(s) {unknown}" if unknown else f"config lacks {missing}"
        raise ValueError(
            f"{path} is damaged: {problem} (a weights config has exactly {sorted(_CONFIG_TYPES)})"
        )
    for key, kind in _CONFIG_TYPES.items():
        value = config[key]
        if kind is bool:
            valid = isinstance(value, bool)
        elif kind is int:
            valid = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        else:  # delta: a positive finite number
            valid = isinstance(value, int | float) and not isinstance(value, bool)
            valid = valid and math.isfinite(value) and value > 0
        if not valid:
            raise ValueError(f"{path} is damaged: invalid config value {key}={value!r}")
    return config


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
    if model.non_local != _NON_LOCAL[name]:  # load_weights would refuse the file
        raise ValueError(
            f"save_weights: the model is a {_KINDS[model.non_local]} (non_local="
            f"{model.non_local}), not a {name!r} model"
        )
    metadata: dict[str, Any] = {"model": name, "config": model.config()}
    if training is not None:
        metadata["training"] = training
    write_weights_file(path, model.state_dict(), metadata)


def nir_gnn(*, weights: str | Path | None = None, **kwargs: Any) -> NIRGNN:
    """NIR-GNN (paper defaults: F=99, r=11, delta=10, k=8).

    Args:
        weights: :obj:`None` (random initialisation), :obj:`"default"` (the weights shipped
            with the package, see ``weights/MODEL_CARD.md``) or the path of a weights file.
        **kwargs: :class:`NIRGNN` arguments (ignored for the architecture when weights are
            given: the weights file fixes it).
    """
    return _build("nir-gnn", weights, non_local=True, **kwargs)


def cnn_baseline(*, weights: str | Path | None = None, **kwargs: Any) -> NIRGNN:
    """The CNN baseline of Table I: NIR-GNN without the non-local path, its width chosen by
    :func:`matched_cnn_features` (from ``match_features``, default 99) unless ``features``
    is given.
    """
    if weights is None and "features" not in kwargs:
        match = kwargs.pop("match_features", 99)
        kwargs["features"] = matched_cnn_features(match, **kwargs)
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
    """Builds a registered model by name (:obj:`"nir-gnn"` or :obj:`"cnn"`)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return _REGISTRY[name](weights=weights, **kwargs)


def default_weights_path(name: str) -> Path:
    """Path of the weights shipped for model :obj:`name`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return _weights_dir() / f"{name}.safetensors"


def model_from_weights(path: str | Path, **runtime: Any) -> tuple[NIRGNN, str]:
    """Builds the model a weights file describes, loaded in eval mode (one read of the file).

    Args:
        path: A file written by :func:`save_weights`.
        **runtime: ``search_window`` and ``graph_backend``, which the file does not fix.

    Returns:
        The model and its registered name (:obj:`"nir-gnn"` or :obj:`"cnn"`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a valid weights file (see :func:`load_weights`), or its
            tensors do not match its config. The message names the file and the problem.
    """
    meta, state = load_weights(path)
    # Compared on the meta device first, which allocates nothing: a small file whose header
    # claims "features": 30000 would otherwise build a model of several GB before failing.
    _check_tensors_fit(path, meta["config"], state)
    model = NIRGNN(**meta["config"], **runtime)
    model.load_state_dict(state)
    return model.eval(), str(meta["model"])


def _state_mismatch(expected: dict[str, Tensor], state: dict[str, Tensor]) -> str:
    # A short summary instead of load_state_dict's error, which lists every key.
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


def _build(name: str, weights: str | Path | None, **kwargs: Any) -> NIRGNN:
    if weights is None:
        return NIRGNN(**kwargs)
    path = default_weights_path(name) if str(weights) == "default" else Path(weights)
    runtime = {k: kwargs[k] for k in ("search_window", "graph_backend") if k in kwargs}
    model, stored_name = model_from_weights(path, **runtime)
    if stored_name != name:
        raise ValueError(f"{path} holds weights of model {stored_name!r}, not {name!r}")
    return model


def model_card(name: str) -> dict[str, Any]:
    """Metadata of the shipped weights of :obj:`name` (command, schedule, metrics)."""
    path = _weights_dir() / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model card for {name!r} at {path}")
    return json.loads(path.read_text())
