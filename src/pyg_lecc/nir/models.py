"""NIR-GNN and its CNN baseline, from `"NIR Image Colorization with Graph-Convolutional
Neural Networks" <https://doi.org/10.1109/VCIP49819.2020.9301839>`_ (Valsesia, Fracastoro,
Magli, VCIP 2020), assembled from the package's generic parts: :class:`LightweightECC`, the
image graph builder :class:`ImageKNNGraph` and 3x3 convolutions.

This module holds the architectures only, built from a
:class:`~pyg_lecc.nir.config.NIRGNNConfig`. The registered models (:func:`nir_gnn`,
:func:`cnn_baseline`, :func:`get_model`), their weights files and model cards are in
:mod:`pyg_lecc.nir.hub`.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from pyg_lecc.conv import LightweightECC
from pyg_lecc.graph import ImageKNNGraph, image_to_nodes, nodes_to_image
from pyg_lecc.nir.config import NIRGNNConfig

__all__ = ["NIRGNN", "LocalNonLocalConv", "matched_cnn_features", "num_parameters"]

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
        # Channels-last: the node view (B H W, C) of the map is then free, the non-local
        # output (a channels-last view of its nodes) adds to the local one without strided
        # copies, and BatchNorm, the activations and the convolutions' backward follow suit
        # (a 0.89x F=24 training iteration on one thread).
        x = x.contiguous(memory_format=torch.channels_last)
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
    code builds the CNN baseline of the paper's Table I. The model keeps its architecture as
    :obj:`arch` (a :class:`~pyg_lecc.nir.config.NIRGNNConfig`).

    Args:
        config (NIRGNNConfig, optional): The architecture (:obj:`None`: the paper's,
            :class:`~pyg_lecc.nir.config.NIRGNNConfig`). (default: :obj:`None`)
        search_window (int, optional): kNN search window (:obj:`None`: whole input, as in
            training on patches; full images use 49 through :mod:`pyg_lecc.nir.inference`).
            (default: :obj:`None`)
        graph_backend (str, optional): Backend of :func:`~pyg_lecc.image_knn_graph`.
            (default: :obj:`"auto"`)
        **arch (optional): Fields of :class:`~pyg_lecc.nir.config.NIRGNNConfig` that replace
            those of :obj:`config`, e.g. :obj:`features=12`.

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
        config: NIRGNNConfig | None = None,
        *,
        search_window: int | None = None,
        graph_backend: str = "auto",
        **arch: Any,
    ) -> None:
        super().__init__()
        self.arch = dataclasses.replace(config or NIRGNNConfig(), **arch)
        self.graph = ImageKNNGraph(
            k=self.arch.k, search_window=search_window, backend=graph_backend
        )

        features = self.arch.features
        third = features // 3
        common = dict(rank=self.arch.rank, delta=self.arch.delta, non_local=self.arch.non_local)
        self.branches = nn.ModuleList(
            _Branch(third, size, circulant_stride=third, **common) for size in (3, 5, 7)
        )
        per_block = self.arch.layers_per_block
        self.hpf = _Block(features, per_block, circulant_stride=third, **common)
        self.lpf = nn.ModuleList(
            _Block(features, per_block, circulant_stride=third, **common) for _ in range(2)
        )
        self.alpha = nn.Parameter(torch.full((2,), 0.5))
        self.beta = nn.Parameter(torch.full((2,), 0.5))
        self.last = LocalNonLocalConv(features, 3, circulant_stride=(third, 3), **common)

    def config(self) -> dict[str, Any]:
        """The architecture as a plain dict (:meth:`NIRGNNConfig.to_dict
        <pyg_lecc.nir.config.NIRGNNConfig.to_dict>`), as stored with weights."""
        return self.arch.to_dict()

    def forward(self, nir: Tensor) -> Tensor:
        if nir.dim() != 4 or nir.size(1) != 1:
            raise ValueError(f"expected NIR images of shape (B, 1, H, W), got {tuple(nir.shape)}")
        graph = self.graph if self.arch.non_local else None
        h = torch.cat([branch(nir, graph) for branch in self.branches], dim=1)
        h_hpf = self.hpf(h, graph)
        for i, block in enumerate(self.lpf):
            s = self.beta[i] * h_hpf + (1 - self.alpha[i]) * h
            h = block(s, graph) + s
        edge_index = graph(h) if graph is not None else None
        # The layers run channels-last (LocalNonLocalConv); the output is contiguous as usual.
        return (nir.expand(-1, 3, -1, -1) + self.last(h, edge_index)).contiguous()


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_cnn_features(gnn_features: int = 99, **arch: Any) -> int:
    """Width of the CNN baseline whose parameter count is closest to that of a NIR-GNN of
    width :obj:`gnn_features` (the paper compares both at roughly equal size).

    Args:
        gnn_features (int, optional): Width of the NIR-GNN. (default: :obj:`99`)
        **arch (optional): The other fields of :class:`~pyg_lecc.nir.config.NIRGNNConfig`
            (:obj:`non_local` is ignored), shared by both models.

    Returns:
        The CNN width, a multiple of 3.

    Example:
        >>> matched_cnn_features(12, rank=2)
        12
    """
    gnn = dataclasses.replace(NIRGNNConfig(**arch), features=gnn_features, non_local=True)
    with torch.device("meta"):
        target = num_parameters(NIRGNN(gnn))
        candidates = range(3, 4 * gnn_features + 4, 3)
        counts = {f: num_parameters(NIRGNN(gnn, features=f, non_local=False)) for f in candidates}
    return min(counts, key=lambda f: abs(counts[f] - target))


def __getattr__(name: str) -> Any:
    # The registry and the weights files are in pyg_lecc.nir.hub since the split of this
    # module; the old spelling pyg_lecc.models.<name> (release 0.1.0) reaches them here.
    hub = importlib.import_module("pyg_lecc.nir.hub")
    if name in hub.__all__:
        warnings.warn(
            f"pyg_lecc.nir.models.{name} moved to pyg_lecc.nir.hub.{name}; the old name is "
            "removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(hub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
