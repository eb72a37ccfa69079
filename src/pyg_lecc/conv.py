"""The Lightweight Edge-Conditioned Convolution as a PyTorch Geometric operator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter, UninitializedParameter
from torch_geometric import EdgeIndex, is_debug_enabled
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import is_uninitialized_parameter
from torch_geometric.nn.inits import zeros
from torch_geometric.typing import Adj, OptPairTensor, OptTensor, PairTensor, Size
from torch_geometric.utils import is_sparse, to_edge_index

from pyg_lecc.ops import edge_aggregate, edge_label_aggregate, targets_of_edges

_IMPLEMENTATIONS = ("node", "edge")
# Aggregations that are linear in the messages: the node-level rewrite is exact for them.
_LINEAR_AGGRS = ("mean", "add", "sum")
_LEAKY_SLOPE = 0.2
# Parameters whose shapes depend on the input width (all but the output bias).
_FILTER_PARAMETERS = (
    "lin0_weight",
    "lin0_bias",
    "psi_weight",
    "psi_bias",
    "phi_weight",
    "phi_bias",
    "omega_weight",
    "omega_bias",
)


def _circulant_strides(
    circulant_stride: int | tuple[int, int] | None, in_channels: int, out_channels: int
) -> tuple[int, int]:
    if circulant_stride is None:
        strides = (in_channels, out_channels)
    elif isinstance(circulant_stride, int):
        strides = (circulant_stride, circulant_stride)
    else:
        strides = tuple(circulant_stride)
        if len(strides) != 2:
            raise ValueError(
                f"'circulant_stride' must be an int or a pair (in, out), got {circulant_stride!r}"
            )
    for name, stride, width in zip(
        ("in", "out"), strides, (in_channels, out_channels), strict=True
    ):
        if not isinstance(stride, int) or stride < 1 or width % stride != 0:
            raise ValueError(
                f"'circulant_stride' ({name} stride {stride!r}) must be a positive integer "
                f"that divides {name}_channels={width}"
            )
    return strides  # type: ignore[return-value]


def _in_channels_pair(in_channels: int | tuple[int, int], edge_dim: int | None) -> tuple[int, int]:
    # (source, target) widths, each a positive integer or -1 (lazy, PyG's convention).
    pair = in_channels if isinstance(in_channels, tuple) else (in_channels, in_channels)
    if len(pair) != 2 or not all(
        isinstance(c, int) and not isinstance(c, bool) and (c >= 1 or c == -1) for c in pair
    ):
        raise ValueError(
            f"'in_channels' must be a positive integer, -1 (lazy) or a pair of them, "
            f"got {in_channels!r}"
        )
    if edge_dim is None and min(pair) > 0 and pair[0] != pair[1]:
        raise ValueError(
            f"'in_channels' {in_channels!r}: source and target widths differ, but without "
            f"'edge_dim' the filter network reads x_j - x_i, which needs one width (or set "
            f"edge_dim to condition on edge features)"
        )
    return pair


def _csr_by_target(edge_index: Tensor, num_dst: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(rowptr, col, perm)``: the edges grouped by target (CSR), sources in ``col``, without
    host synchronisation; ``perm`` is the stable permutation that groups them (edge features
    follow it), or :obj:`None` when they came grouped.

    An :class:`~torch_geometric.EdgeIndex` sorted by target (with
    ``num_cols == num_dst``), such as :func:`~pyg_lecc.image_knn_graph` returns,
    gives its CSC pointers and source row as they are: its indices are not read (the
    builder fills the pointer cache). A plain tensor is checked for grouping on eager CPU
    (one pass) and otherwise sorted (stable, so edges keep their order).
    """
    if isinstance(edge_index, EdgeIndex):
        if edge_index.is_sorted_by_col and edge_index.num_cols == num_dst:
            if torch.compiler.is_compiling() and edge_index._indptr is None:
                # Filling the cache of a subclass input cannot be traced: compute the
                # pointers without storing them (the edges are grouped, so no sort).
                row, col = edge_index.as_tensor()
                return torch._convert_indices_from_coo_to_csr(col, num_dst), row, None
            (colptr, row), _ = edge_index.get_csc()
            return colptr, row, None
        edge_index = edge_index.as_tensor()
    src, dst = edge_index[0], edge_index[1]
    # On CPU in eager mode, reading a flag costs no synchronisation and skips a slow sort
    # for graphs that come grouped by target as plain tensors.
    grouped = (
        dst.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and bool((dst[1:] >= dst[:-1]).all())
    )
    perm = None
    if not grouped:
        dst, perm = torch.sort(dst, stable=True)
        src = src.index_select(0, perm)
    return torch._convert_indices_from_coo_to_csr(dst, num_dst), src, perm


class LightweightECC(MessagePassing):
    r"""The Lightweight Edge-Conditioned Convolution from the `"Deep
    Graph-Convolutional Image Denoising" <https://arxiv.org/abs/1907.08448>`_ paper, as used
    by NIR-GNN in `"NIR Image Colorization with Graph-Convolutional Neural Networks"
    <https://doi.org/10.1109/VCIP49819.2020.9301839>`_ (non-local term of equation (1)).

    .. math::
        \mathbf{x}^{\prime}_i = \frac{1}{|\mathcal{N}(i)|} \sum_{j \in \mathcal{N}(i)}
        \gamma_{j,i} \sum_{t=1}^{r} \omega_t^{j,i}\, \boldsymbol{\phi}_t^{j,i}
        \big(\boldsymbol{\psi}_t^{j,i}\big)^{\top} \mathbf{x}_j + \mathbf{b},
        \qquad
        \gamma_{j,i} = \exp\!\big(-\|\mathbf{x}_j - \mathbf{x}_i\|_2^2 / \delta\big),

    where :math:`(\boldsymbol{\Psi}, \boldsymbol{\Phi}, \boldsymbol{\omega}) =
    h_{\mathbf{\Theta}}(\mathbf{x}_j - \mathbf{x}_i)` is a two-layer filter network
    :math:`\mathbf{z} = \mathrm{LeakyReLU}(\mathbf{W}_0 (\mathbf{x}_j - \mathbf{x}_i) +
    \mathbf{b}_0)` whose second layer produces the rows
    :math:`\boldsymbol{\psi}_t \in \mathbb{R}^{F_{in}}` of
    :math:`\boldsymbol{\Psi} \in \mathbb{R}^{r \times F_{in}}` and
    :math:`\boldsymbol{\phi}_t \in \mathbb{R}^{F_{out}}` of
    :math:`\boldsymbol{\Phi} \in \mathbb{R}^{r \times F_{out}}` as a stack of
    :math:`F / s` partial circulant blocks (the hidden vector rolled by :math:`0, s, 2s,
    \ldots`), and :math:`\boldsymbol{\omega} = \mathbf{W}_\omega \mathbf{z} +
    \mathbf{b}_\omega \in \mathbb{R}^r`.
    The per-edge weight matrix :math:`\sum_t \omega_t \boldsymbol{\phi}_t
    \boldsymbol{\psi}_t^{\top}` thus has rank at most :math:`r`.

    With :obj:`edge_dim` set, the layer is conditioned on edge features
    :math:`\mathbf{e}_{j,i} \in \mathbb{R}^{D}` instead, like PyG's
    :class:`~torch_geometric.nn.conv.NNConv` but without its dense per-edge matrix:
    :math:`\mathbf{e}_{j,i}` replaces :math:`\mathbf{x}_j - \mathbf{x}_i` both as the label of
    the filter network and in the attention,

    .. math::
        \mathbf{z}^{j,i} = \mathrm{LeakyReLU}(\mathbf{W}_0 \mathbf{e}_{j,i} + \mathbf{b}_0),
        \qquad
        \gamma_{j,i} = \exp\!\big(-\|\mathbf{e}_{j,i}\|_2^2 / \delta\big),

    with :math:`\mathbf{W}_0 \in \mathbb{R}^{F_h \times D}`. :obj:`attention=False` sets
    :math:`\gamma_{j,i} = 1` (with or without :obj:`edge_dim`), for edge features that are
    not distances.

    By default (:obj:`implementation="node"`) the operator is computed with an exact
    rewrite that moves the two large contractions of the filter network from edges to nodes
    and keeps no :math:`E \times r \times F` tensor for backward; :obj:`implementation="edge"`
    builds :math:`\boldsymbol{\Psi}` and :math:`\boldsymbol{\Phi}` for every edge, as written
    above, through :meth:`message` (the reference implementation, also used for
    non-linear aggregations and whenever PyG's explain machinery needs per-edge messages).
    With :obj:`edge_dim` (or :obj:`attention=False`) the node-level rewrite computes the
    first layer of the filter network per edge (:math:`E \times F_h`, with autograd) and runs
    the rest of the per-edge pipeline, from its activation on, as one fused operator,
    :func:`~pyg_lecc.ops.edge_label_aggregate` (a Numba kernel on CPU).

    An :class:`~torch_geometric.EdgeIndex` that declares :obj:`sort_order="col"` is trusted,
    as everywhere in PyG: its cached pointers group the edges by target without the indices
    being read, so an index that claims an order it does not have gives wrong results. In
    PyG's debug mode (:func:`torch_geometric.debug`) it is validated first
    (:meth:`~torch_geometric.EdgeIndex.validate`).

    Args:
        in_channels (int or tuple): Size of each input sample :math:`F_{in}`, or :obj:`-1`
            to derive it from the first input (lazy initialisation). Without
            :obj:`edge_dim`, source and target nodes share it (the label
            :math:`\mathbf{x}_j - \mathbf{x}_i` needs both); with :obj:`edge_dim`, a tuple
            sets the source and target sizes separately (bipartite graphs, heterogeneous
            graphs with :func:`~torch_geometric.nn.to_hetero`), and only the source features
            enter the layer.
        out_channels (int): Size of each output sample :math:`F_{out}`.
        rank (int, optional): Maximum rank :math:`r` of the per-edge weight matrix.
            (default: :obj:`11`)
        delta (float, optional): Decay :math:`\delta` of the edge attention.
            (default: :obj:`10.0`)
        circulant_stride (int or (int, int), optional): Stride :math:`s` of the partial
            circulant blocks of :math:`\boldsymbol{\Psi}` and :math:`\boldsymbol{\Phi}`;
            a pair sets the input and output strides separately. Each stride must divide
            its width; the second layer then has :math:`F/s` times fewer weights than a dense
            one. :obj:`None` means a dense layer (:math:`s = F`). (default: :obj:`None`)
        hidden_channels (int, optional): Width :math:`F_h` of the filter network's hidden
            layer. :obj:`None` means :obj:`in_channels`. (default: :obj:`None`)
        aggr (str, optional): The aggregation scheme (:obj:`"mean"`, :obj:`"add"` or any
            PyG aggregation; non-linear ones use the per-edge implementation).
            (default: :obj:`"mean"`)
        bias (bool, optional): If set to :obj:`False`, the layer will not learn an additive
            bias. (default: :obj:`True`)
        implementation (str, optional): :obj:`"node"` (exact node-level rewrite, fast and
            memory-bounded) or :obj:`"edge"` (direct per-edge reference).
            (default: :obj:`"node"`)
        edge_dim (int, optional): Size :math:`D` of the edge features. If set,
            :meth:`forward` needs :obj:`edge_attr` (or a sparse adjacency whose values hold
            it) and conditions the filter network and the attention on it instead of
            :math:`\mathbf{x}_j - \mathbf{x}_i`. (default: :obj:`None`)
        attention (bool, optional): If set to :obj:`False`, the edge attention
            :math:`\gamma_{j,i}` is fixed to :math:`1`. (default: :obj:`True`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:**
          node features :math:`(|\mathcal{V}|, F_{in})` or
          :math:`((|\mathcal{V_s}|, F_{in}), (|\mathcal{V_t}|, F_{in}))` if bipartite
          (with :obj:`edge_dim`, the target features may be :obj:`None`: then
          :math:`|\mathcal{V}_t|` is :obj:`size[1]`, or :math:`|\mathcal{V}_s|`),
          edge indices :math:`(2, |\mathcal{E}|)` or a sparse adjacency matrix,
          edge features :math:`(|\mathcal{E}|, D)` in the node features' dtype *(only
          with* :obj:`edge_dim` *)*, :obj:`size` :math:`(|\mathcal{V}_s|, |\mathcal{V}_t|)`
          *(optional; it must match the node features that are given)*
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})` or
          :math:`(|\mathcal{V}_t|, F_{out})` if bipartite

    Example:
        >>> conv = LightweightECC(16, 32, rank=4, circulant_stride=8)
        >>> conv
        LightweightECC(16, 32, rank=4)
        >>> x = torch.randn(10, 16)
        >>> edge_index = torch.tensor([[1, 2, 3, 0], [0, 0, 1, 2]])
        >>> conv(x, edge_index).shape
        torch.Size([10, 32])
        >>> conv = LightweightECC(16, 32, rank=4, edge_dim=3)
        >>> edge_attr = torch.randn(4, 3)
        >>> conv(x, edge_index, edge_attr).shape
        torch.Size([10, 32])
    """

    def __init__(
        self,
        in_channels: int | tuple[int, int],
        out_channels: int,
        rank: int = 11,
        delta: float = 10.0,
        circulant_stride: int | tuple[int, int] | None = None,
        hidden_channels: int | None = None,
        aggr: str = "mean",
        bias: bool = True,
        implementation: str = "node",
        edge_dim: int | None = None,
        attention: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(aggr=aggr, **kwargs)
        in_src, in_dst = _in_channels_pair(in_channels, edge_dim)
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"'out_channels' must be a positive integer, got {out_channels!r}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"'rank' must be an integer >= 1, got {rank!r}")
        if not delta > 0:
            raise ValueError(f"'delta' must be > 0, got {delta!r}")
        if hidden_channels is not None and (
            not isinstance(hidden_channels, int) or hidden_channels < 1
        ):
            raise ValueError(
                f"'hidden_channels' must be a positive integer or None, got {hidden_channels!r}"
            )
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(
                f"'implementation' must be one of {_IMPLEMENTATIONS}, got {implementation!r}"
            )
        if edge_dim is not None and (
            isinstance(edge_dim, bool) or not isinstance(edge_dim, int) or edge_dim < 1
        ):
            raise ValueError(f"'edge_dim' must be a positive integer or None, got {edge_dim!r}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.rank = rank
        self.delta = float(delta)
        self.circulant_stride = circulant_stride
        self.hidden_channels = hidden_channels
        self.implementation = implementation
        self.edge_dim = edge_dim
        self.attention = bool(attention)
        # Widths of the source and target features; -1 until the first forward (lazy).
        self._in_src, self._in_dst = in_src, in_dst

        for name in _FILTER_PARAMETERS:
            # Every filter weight depends on F_in (directly or through F_h = F_in).
            setattr(self, name, UninitializedParameter())
        if in_src > 0:
            self._materialize(in_src)
        else:
            self._lazy_hook = self.register_forward_pre_hook(self._initialize_lazy)
        self.register_load_state_dict_pre_hook(self._materialize_from_state)
        if bias:
            self.bias = Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _parameter_shapes(self, in_src: int) -> dict[str, tuple[int, ...]]:
        Fh, r = self.hidden_channels or in_src, self.rank
        s_in, s_out = _circulant_strides(self.circulant_stride, in_src, self.out_channels)
        return {
            "lin0_weight": (Fh, self.edge_dim or in_src),
            "lin0_bias": (Fh,),
            # Second layer of the filter network: one dense block per output, replicated
            # by rolls.
            "psi_weight": (Fh, r, s_in),
            "psi_bias": (r, in_src),
            "phi_weight": (Fh, r, s_out),
            "phi_bias": (r, self.out_channels),
            "omega_weight": (r, Fh),
            "omega_bias": (r,),
        }

    @torch.no_grad()
    def _materialize(self, in_src: int) -> None:
        shapes = self._parameter_shapes(in_src)  # validates the strides against in_src
        for name, shape in shapes.items():
            param = getattr(self, name)
            if is_uninitialized_parameter(param):
                param.materialize(shape)
        self._in_src = in_src
        self._in_dst = self._in_dst if self._in_dst > 0 or self.edge_dim else in_src
        self._strides = (shapes["psi_weight"][-1], shapes["phi_weight"][-1])

    @torch.no_grad()
    def _initialize_lazy(self, module: torch.nn.Module, inputs: tuple) -> None:
        # PyG's lazy convention (in_channels=-1): the widths come from the first input.
        x = inputs[0]
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        if not isinstance(x_src, Tensor):
            return  # forward names the problem
        if any(is_uninitialized_parameter(getattr(self, n)) for n in _FILTER_PARAMETERS):
            self._materialize(x_src.size(-1))
            self.reset_parameters()
        if self._in_dst < 0 and x_dst is not None:
            self._in_dst = x_dst.size(-1)
        self._lazy_hook.remove()
        del self._lazy_hook

    def _materialize_from_state(
        self, module: torch.nn.Module, state_dict: dict, prefix: str, *args
    ) -> None:
        # Loading trained weights into a lazy layer: their shapes give the widths.
        psi_bias = state_dict.get(prefix + "psi_bias")
        if self._in_src < 0 and isinstance(psi_bias, Tensor) and psi_bias.dim() == 2:
            self._materialize(psi_bias.size(1))

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters (initialisation of the authors' reference code:
        Glorot normal first layer, normal second layer with standard deviation
        :math:`1 / \sqrt{F_h F_{in}}`, :math:`\omega` layer with :math:`1/\sqrt{r}`, zero
        biases)."""
        super().reset_parameters()
        zeros(self.bias)
        if self._in_src < 0:
            return  # lazy: the filter network is initialised at the first forward
        torch.nn.init.xavier_normal_(self.lin0_weight)
        std = 1.0 / math.sqrt(self.lin0_weight.size(0) * self._in_src)
        torch.nn.init.normal_(self.psi_weight, std=std)
        torch.nn.init.normal_(self.phi_weight, std=std)
        torch.nn.init.normal_(self.omega_weight, std=1.0 / math.sqrt(self.rank))
        for b in (self.lin0_bias, self.psi_bias, self.phi_bias, self.omega_bias):
            zeros(b)

    def forward(
        self,
        x: Tensor | OptPairTensor,
        edge_index: Adj,
        edge_attr: OptTensor = None,
        size: Size = None,
    ) -> Tensor:
        if isinstance(x, Tensor):
            x = (x, x)
        self._check_features(x)
        num_nodes = self._num_nodes(x, size)

        implementation = self.implementation
        if self.explain or self.aggr not in _LINEAR_AGGRS:
            implementation = "edge"

        if self.edge_dim is None:
            if edge_attr is not None:
                raise ValueError(
                    f"{self.__class__.__name__} got 'edge_attr' but was built without "
                    f"'edge_dim': pass edge_dim=edge_attr.size(-1) to the constructor to "
                    f"condition on edge features"
                )
        elif is_sparse(edge_index):
            # Its values are the edge features, as in PyG's NNConv and GINEConv.
            edge_index, value = self._edges_of_sparse(edge_index)
            if edge_attr is None and value.dim() > 1:
                edge_attr = value

        if self.edge_dim is not None:
            edge_attr = self._check_edge_attr(edge_attr, edge_index, x[0])

        if implementation == "edge":
            if not is_sparse(edge_index):
                self._check_edge_index(edge_index, num_nodes)
            # propagate_type: (x: PairTensor, edge_attr: OptTensor)
            out = self.propagate(edge_index, x=x, edge_attr=edge_attr, size=num_nodes)
        else:
            if is_sparse(edge_index):
                edge_index, _ = self._edges_of_sparse(edge_index)
            self._check_edge_index(edge_index, num_nodes)
            if edge_attr is None and self.attention:
                out = self._node_level(x, edge_index, num_nodes[1])
            else:
                out = self._node_level_edge_label(x, edge_index, edge_attr, num_nodes[1])

        if self.bias is not None:
            out = out + self.bias
        return out

    def message(self, x_i: Tensor, x_j: Tensor, edge_attr: OptTensor) -> Tensor:
        label = x_j - x_i if self.edge_dim is None or edge_attr is None else edge_attr
        z = self._hidden(label)
        psi = self._circulant_rows(z, self.psi_weight, self._in_src) + self.psi_bias
        phi = self._circulant_rows(z, self.phi_weight, self.out_channels) + self.phi_bias
        omega = F.linear(z, self.omega_weight, self.omega_bias)  # (E, r)
        coeff = omega * torch.einsum("etf,ef->et", psi, x_j)
        if self.attention:
            coeff = self._attention(label).unsqueeze(-1) * coeff
        return torch.einsum("eto,et->eo", phi, coeff)

    def _hidden(self, label: Tensor) -> Tensor:
        return F.leaky_relu(F.linear(label, self.lin0_weight, self.lin0_bias), _LEAKY_SLOPE)

    def _attention(self, label: Tensor) -> Tensor:
        # (l * l) rather than l.pow(2): the same numbers, a faster backward on E x D labels.
        return torch.exp(-(label * label).sum(-1) / self.delta)

    @staticmethod
    def _circulant_rows(z: Tensor, weight: Tensor, width: int) -> Tensor:
        # Per-edge rows of Psi (or Phi): the hidden vector rolled by 0, s, 2s, ... (one roll
        # per circulant block) times one dense (F_h, r, s) block, blocks side by side.
        s = weight.size(-1)
        rolled = torch.stack([z.roll(b * s, dims=-1) for b in range(width // s)], dim=1)
        blocks = torch.einsum("ebg,gtc->etbc", rolled, weight)  # (E, r, blocks, s)
        return blocks.reshape(z.size(0), weight.size(1), width)

    @staticmethod
    def _circulant_matrix(weight: Tensor, width: int) -> Tensor:
        # The same linear map as `_circulant_rows`, as one (width, r * F_h) matrix acting on
        # node features: row f = b * s + c of block b reads the weights rolled back by b * s.
        Fh, r, s = weight.shape
        blocks = [weight.roll(-b * s, dims=0).permute(2, 1, 0) for b in range(width // s)]
        return torch.cat(blocks, dim=0).reshape(width, r * Fh)

    @staticmethod
    def _edges_of_sparse(adj: Adj) -> tuple[Tensor, Tensor]:
        # A sparse adjacency is transposed (targets are rows, sources columns).
        (dst_src, value) = to_edge_index(adj)
        return dst_src.flip(0), value

    def _source_terms(self, x_src: Tensor) -> tuple[Tensor, Tensor]:
        # Psi x_j = A1(z) x_j + B1 x_j: V_j = A1 x_j as (N_src, r, F_h) and c_j = B1 x_j.
        r, Fh = self.rank, self.lin0_weight.size(0)
        A1 = self._circulant_matrix(self.psi_weight, self._in_src)
        V = (x_src @ A1).view(x_src.size(0), r, Fh)  # explicit rows: 0 nodes is valid
        return V, F.linear(x_src, self.psi_bias)

    def _target_output(self, Q: Tensor, P: Tensor, degree: Tensor) -> Tensor:
        # Phi^T a = A2(sum a z^T) + B2^T sum a, on the target nodes.
        A2 = self._circulant_matrix(self.phi_weight, self.out_channels)  # (F_out, r * F_h)
        out = Q.reshape(Q.size(0), A2.size(1)) @ A2.t() + P @ self.phi_bias
        if self.aggr == "mean":
            # Scaling the output rows is the same as scaling Q and P, on F_out numbers.
            out = out / degree.clamp(min=1).unsqueeze(-1).to(out.dtype)
        return out

    def _node_level(self, x: PairTensor, edge_index: Tensor, num_dst: int) -> Tensor:
        # Exact rewrite of `message` + linear aggregation (docs: "The node-level formulation"):
        #   Psi x_j = A1(z) x_j + B1 x_j with A1 linear in z, so the F_in contraction moves
        #   to the source nodes (V_j = A1 x_j); Phi^T a = A2(sum a z^T) + B2^T sum a, so the
        #   F_out contraction moves to the target nodes. The per-edge work in between is one
        #   fused op (`pyg_lecc.ops.edge_aggregate`) over the edges grouped by target.
        x_src, x_dst = x
        rowptr, col, _ = _csr_by_target(edge_index, num_dst)

        # W0 (x_j - x_i) = W0 x_j - W0 x_i: one product per node instead of per edge.
        V, c = self._source_terms(x_src)
        y_src = F.linear(x_src, self.lin0_weight)
        y_dst = y_src if x_dst is x_src else F.linear(x_dst, self.lin0_weight)
        Q, P = edge_aggregate(
            x_src,
            x_dst,
            y_src,
            y_dst,
            self.lin0_bias,
            V,
            c,
            self.omega_weight,
            self.omega_bias,
            rowptr,
            col,
            self.delta,
            _LEAKY_SLOPE,
        )
        return self._target_output(Q, P, rowptr.diff())

    def _node_level_edge_label(
        self, x: PairTensor, edge_index: Tensor, edge_attr: OptTensor, num_dst: int
    ) -> Tensor:
        # The same node-level rewrite with the hidden layer computed per edge (from
        # `edge_attr`, or from x_j - x_i without attention): only its pre-activation
        # (E x F_h) and gamma live on edges; the fused op (`pyg_lecc.ops.edge_label_aggregate`)
        # does the rest over the edges grouped by target, without any E x r x F_h tensor.
        x_src, x_dst = x
        rowptr, col, perm = _csr_by_target(edge_index, num_dst)
        gamma = None
        if edge_attr is None:
            # W0 (x_j - x_i) = W0 x_j - W0 x_i: one product per node instead of per edge.
            y_src = F.linear(x_src, self.lin0_weight)
            y_dst = y_src if x_dst is x_src else F.linear(x_dst, self.lin0_weight)
            dst = targets_of_edges(rowptr, col.numel())
            pre = y_src.index_select(0, col) - y_dst.index_select(0, dst) + self.lin0_bias
        else:
            if perm is not None:
                edge_attr = edge_attr.index_select(0, perm)  # into the CSR order of `col`
            pre = F.linear(edge_attr, self.lin0_weight, self.lin0_bias)
            if self.attention:
                gamma = self._attention(edge_attr)
        V, c = self._source_terms(x_src)
        # The leaky ReLU is fused into the op: z itself is never stored.
        Q, P = edge_label_aggregate(
            pre, gamma, V, c, self.omega_weight, self.omega_bias, rowptr, col, _LEAKY_SLOPE
        )
        return self._target_output(Q, P, rowptr.diff())

    def _check_edge_attr(self, edge_attr: OptTensor, edge_index: Adj, x_src: Tensor) -> Tensor:
        name = self.__class__.__name__
        if edge_attr is None:
            raise ValueError(
                f"{name} was built with edge_dim={self.edge_dim} and needs 'edge_attr' of "
                f"shape (num_edges, {self.edge_dim}) (or a sparse adjacency whose values "
                f"hold them), got none"
            )
        if edge_attr.dim() == 1 and self.edge_dim == 1:
            edge_attr = edge_attr.unsqueeze(-1)
        num_edges = edge_index.size(1) if isinstance(edge_index, Tensor) else None
        if (
            edge_attr.dim() != 2
            or edge_attr.size(-1) != self.edge_dim
            or (num_edges is not None and edge_attr.size(0) != num_edges)
        ):
            raise ValueError(
                f"{name} expects 'edge_attr' of shape ({num_edges or 'num_edges'}, "
                f"{self.edge_dim}) (edge_dim={self.edge_dim}), got {tuple(edge_attr.shape)}"
            )
        # Autocast casts for itself; otherwise torch's own error would not name the argument.
        if edge_attr.dtype != x_src.dtype and not torch.is_autocast_enabled(x_src.device.type):
            raise ValueError(
                f"{name} expects 'edge_attr' in the dtype of the node features "
                f"({x_src.dtype}), got {edge_attr.dtype}: cast it with "
                f"edge_attr.to(x.dtype) (integer categories are better one-hot encoded)"
            )
        return edge_attr

    def _check_features(self, x: OptPairTensor) -> None:
        name = self.__class__.__name__
        if x[0] is None:
            raise ValueError(f"{name} needs source node features, got None")
        if x[1] is None and self.edge_dim is None:
            raise ValueError(
                f"{name} got target node features None, but without 'edge_dim' the filter "
                f"network reads x_j - x_i and needs them: pass (x_src, x_dst) (with "
                f"NeighborLoader batches, x_dst = x_src[:num_targets]), or condition on "
                f"edge features with edge_dim"
            )
        widths = (self._in_src, self._in_dst)
        for role, feats, width in zip(("source", "target"), x, widths, strict=True):
            if feats is None:
                continue
            if feats.dim() != 2 or (width > 0 and feats.size(-1) != width):
                raise ValueError(
                    f"{name} expects {role} node features of shape "
                    f"(num_nodes, {width if width > 0 else 'F'}), got {tuple(feats.shape)}"
                )

    def _num_nodes(self, x: OptPairTensor, size: Size) -> tuple[int, int]:
        # PyG's rule: a given `size` must match the node tensors that exist; the kernels
        # index those tensors, so a larger size would read past their ends. Missing target
        # features (edge_dim mode) take size[1], else as many targets as sources.
        given = (None, None) if size is None else tuple(size)
        if len(given) != 2:
            raise ValueError(f"'size' must be a pair (num_src, num_dst), got {size!r}")
        for role, feats, n in zip(("source", "target"), x, given, strict=True):
            if feats is not None and n is not None and n != feats.size(0):
                raise ValueError(
                    f"'size' {tuple(given)} does not match the {role} node features, which "
                    f"have {feats.size(0)} rows"
                )
        num_src = x[0].size(0)
        if x[1] is not None:
            return num_src, x[1].size(0)
        return num_src, num_src if given[1] is None else int(given[1])

    def _check_edge_index(self, edge_index: Tensor, num_nodes: tuple[int, int]) -> None:
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(
                f"'edge_index' must have shape (2, num_edges), got {tuple(edge_index.shape)}"
            )
        if edge_index.dtype != torch.long:
            raise ValueError(f"'edge_index' must have dtype torch.long, got {edge_index.dtype}")
        # Range checks read the indices (a device sync, a graph break): eager CPU tensors,
        # or any device in PyG's debug mode (`torch_geometric.debug()`), as PyG does. The
        # fused op checks its own pointers and indices whatever happens here.
        if torch.compiler.is_compiling() or edge_index.numel() == 0:
            return
        if edge_index.device.type != "cpu" and not is_debug_enabled():
            return
        if isinstance(edge_index, EdgeIndex) and is_debug_enabled():
            edge_index.validate()  # its claimed sort order is trusted otherwise
        for row, role, n in zip((0, 1), ("source", "target"), num_nodes, strict=True):
            lo, hi = int(edge_index[row].min()), int(edge_index[row].max())
            if lo < 0 or hi >= n:
                raise IndexError(
                    f"'edge_index' {role} indices must lie in [0, {n - 1}], "
                    f"found values in [{lo}, {hi}]"
                )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, rank={self.rank})"
        )
