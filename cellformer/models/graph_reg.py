"""Graph regularisation of attention heads: row-wise KL(Ã_i || α_i) on sampled rows.

For a graph ``k`` tied to ``(layer ℓ, head h)`` the term is (design note, section 3)::

    L_k = λ_k · mean_{i ∈ I_k} KL(Ã_i ‖ α_i),     KL(Ã_i ‖ α_i) = Σ_{j ∈ supp Ã_i} Ã_ij (log Ã_ij − log α_ij)

* ``Ã`` is the row-normalised (weighted) adjacency. Rows and columns of *added* (heterologous) genes
  are removed from ``A`` before normalising, so added genes never carry target mass.
* ``α_i = softmax_j(q_i · k_j / √d_h)`` over the ``N`` **gene keys only**: the CLS key is excluded and
  the softmax renormalised over genes (equivalently: the gene–gene block of the attention map with
  each row renormalised). Added genes of the base genome stay in the normaliser (their ``Ã`` is 0).
  Genes appended by a heterologous *variant* are not part of it at all: the term is always computed
  on the wild-type encoder pass.
* ``I_k`` are ``rows`` rows drawn uniformly without replacement among the *valid* rows: genes with
  at least one edge that are not added genes. Rows are drawn from the regulariser's generator (the
  model's own, so that they never shift the global RNG stream), or the global torch RNG without one.
* The normaliser is exact (log-softmax over all N keys); extra memory is O(rows · N) per head, a
  dense N×N map is never built.

:class:`GraphRegularizer` holds the tied graphs' ``Ã`` and computes the terms from a pass's LayerNorm'd layer
inputs; CellFormer (one wild-type sequence per step) and the locus CellFormer of genotype mode (one sequence
per sample) both use it. The tests compare it with an O(N²) dense reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from cellformer.errors import UserError, did_you_mean, unknown_name_error
from cellformer.graphs.graph import GeneGraph

REG_KEYS = {"layer", "head", "weight", "rows", "transpose"}


@dataclass(frozen=True)
class GraphRegConfig:
    """Which head(s) a graph regularises, its weight λ and the rows sampled per step (None = all).

    ``layers`` lists the layers whose head ``head`` is tied (the term is the mean over them); ``transpose``
    ties the head to ``Aᵀ`` (for a directed graph: targets attend to their regulators rather than
    regulators to their targets).
    """

    layers: tuple[int, ...]
    head: int
    weight: float = 1.0
    rows: int | None = 256
    transpose: bool = False

    @property
    def layer(self) -> int:
        """The first tied layer (the one reports and monitoring show)."""
        return self.layers[0]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer"] = self.layers[0] if len(self.layers) == 1 else list(self.layers)
        del d["layers"]
        return d


def parse_graph_reg(
    graph_reg: Mapping[str, Mapping] | None, graph_names: list[str], n_layers: int, n_heads: int
) -> dict[str, GraphRegConfig]:
    """Validate the ``graph_reg`` hyper-parameter; errors name the valid choices.

    Each entry is ``graph: {layer: int | [int, ...], head: int, weight: λ ≥ 0, rows: int | None,
    transpose: bool}``.
    """
    out: dict[str, GraphRegConfig] = {}
    for name, spec in (graph_reg or {}).items():
        if name not in graph_names:
            raise unknown_name_error("graph in graph_reg", name, graph_names)
        if not isinstance(spec, Mapping):
            raise UserError(f"graph_reg[{name!r}] must be a dict with keys {sorted(REG_KEYS)}, got {spec!r}")
        extra = set(spec) - REG_KEYS
        if extra:
            key = sorted(extra)[0]
            raise UserError(
                f"graph_reg[{name!r}] has unknown key {key!r}; allowed: {sorted(REG_KEYS)}{did_you_mean(key, REG_KEYS)}"
            )
        if "layer" not in spec or "head" not in spec:
            raise UserError(f"graph_reg[{name!r}] needs 'layer' and 'head'")
        raw_layers = spec["layer"] if isinstance(spec["layer"], list | tuple) else [spec["layer"]]
        layers = tuple(int(x) for x in raw_layers)
        if not layers or len(set(layers)) != len(layers):
            raise UserError(f"graph_reg[{name!r}]: layer must be an int or a list of distinct ints: {spec['layer']}")
        head = int(spec["head"])
        for layer in layers:
            if not 0 <= layer < n_layers:
                raise UserError(f"graph_reg[{name!r}]: layer {layer} out of range; valid layers are 0..{n_layers - 1}")
        if not 0 <= head < n_heads:
            raise UserError(f"graph_reg[{name!r}]: head {head} out of range; valid heads are 0..{n_heads - 1}")
        weight = float(spec.get("weight", 1.0))
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"graph_reg[{name!r}]: weight must be a finite number >= 0, got {spec.get('weight')}")
        rows = spec.get("rows", 256)
        if rows is not None and int(rows) <= 0:
            raise UserError(f"graph_reg[{name!r}]: rows must be a positive int or None (all rows), got {rows}")
        transpose = spec.get("transpose", False)
        if not isinstance(transpose, bool):
            raise UserError(f"graph_reg[{name!r}]: transpose must be true or false, got {transpose!r}")
        out[name] = GraphRegConfig(layers, head, weight, None if rows is None else int(rows), transpose)
    return out


def normalized_adjacency(graph: GeneGraph, added: np.ndarray, transpose: bool = False) -> dict[str, torch.Tensor]:
    """CSR pieces of ``Ã`` (``crow``, ``col``, ``val``) and the sorted ``valid`` rows, as tensors.

    ``added`` is the (N,) mask of added genes of the genome; the graph may cover fewer genes (genes
    beyond it have no edges). Edges touching added genes are dropped before row-normalising.
    ``transpose`` normalises ``Aᵀ`` instead (rows = targets of a directed graph).
    """
    n = len(added)
    if graph.num_nodes > n:
        raise ValueError(f"graph {graph.name!r} has {graph.num_nodes} nodes but the genome only {n} genes")
    adj = graph.adj if graph.num_nodes == n else graph.with_num_nodes(n).adj
    if transpose:
        adj = sp.csr_matrix(adj.T)
    if adj.nnz and adj.data.min() < 0:
        raise ValueError(f"graph {graph.name!r} has negative edge weights; Ã must be a distribution")
    keep = sp.diags((~np.asarray(added, dtype=bool)).astype(np.float32))
    adj = sp.csr_matrix(keep @ adj @ keep)
    adj.eliminate_zeros()
    rowsum = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.divide(1.0, rowsum, out=np.zeros_like(rowsum), where=rowsum > 0)
    a = sp.csr_matrix(sp.diags(inv.astype(np.float32)) @ adj)
    a.sort_indices()
    return {
        "crow": torch.from_numpy(a.indptr.astype(np.int64)),
        "col": torch.from_numpy(a.indices.astype(np.int64)),
        "val": torch.from_numpy(a.data.astype(np.float32)),
        "valid": torch.from_numpy(np.flatnonzero(rowsum > 0).astype(np.int64)),
    }


def sample_rows(valid: torch.Tensor, n: int | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` of the ``valid`` rows uniformly without replacement (all of them when n is None or too big)."""
    if n is None or n >= valid.numel():
        return valid
    pick = torch.randperm(valid.numel(), generator=generator)[:n]  # CPU global RNG unless a generator is given
    return valid[pick.sort().values.to(valid.device)]


def row_entries(rows: torch.Tensor, crow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the CSR rows ``rows``: ``(seg, entry)`` -- which sampled row each stored entry belongs to and its
    position in the CSR arrays (all entries of the sampled rows, in order)."""
    start, count = crow[rows], crow[rows + 1] - crow[rows]
    seg = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
    offset = torch.arange(seg.numel(), device=rows.device) - torch.repeat_interleave(count.cumsum(0) - count, count)
    return seg, start[seg] + offset


def row_kl(log_alpha: torch.Tensor, rows: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor):
    """KL(Ã_i ‖ α_i) for each sampled row, from CSR ``Ã`` and ``log_alpha`` (..., R, N) of those rows.

    Only the support of ``Ã_i`` enters (0·log 0 = 0); ``log_alpha`` already holds the exact normaliser.
    Leading dimensions (e.g. samples) are kept: the result is (..., R).
    """
    seg, entry = row_entries(rows, crow)
    a, j = val[entry], col[entry]
    terms = a * (a.log() - log_alpha[..., seg, j])
    out = torch.zeros(*log_alpha.shape[:-2], rows.numel(), dtype=terms.dtype, device=terms.device)
    return out.index_add(-1, seg, terms)


def head_log_attention(x: torch.Tensor, attn, head: int, rows: torch.Tensor) -> torch.Tensor:
    """log α (..., R, N) of one head for query genes ``rows`` over all gene keys (CLS excluded).

    ``x`` is the (..., 1 + N, d) layer input *after* LayerNorm (CLS first), ``attn`` the layer's
    :class:`~cellformer.models.layers.SelfAttention`. Only this head's slices of the fused qkv weight are
    used, so the gradient reaches exactly those rows. Computed in float32 even under autocast.
    """
    q_rows, k_rows = attn.head_slices(head)
    w, b = attn.qkv.weight.float(), attn.qkv.bias.float()
    with torch.autocast(x.device.type, enabled=False):
        genes = x[..., 1:, :].float()
        q = F.linear(genes[..., rows, :], w[q_rows], b[q_rows])  # (..., R, d_h)
        k = F.linear(genes, w[k_rows], b[k_rows])  # (..., N, d_h)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return torch.log_softmax(logits, dim=-1)


# ---------------------------------------------------------------------- the regulariser module
class GraphRows(nn.Module):
    """One graph's row-normalised ``Ã`` in CSR form (``crow``, ``col``, ``val``) and its sorted ``valid`` rows,
    as buffers that follow the model to its device (rebuilt from the graph, so not saved)."""

    def __init__(self, graph: GeneGraph, added: np.ndarray, transpose: bool = False):
        super().__init__()
        for part, t in normalized_adjacency(graph, added, transpose).items():
            self.register_buffer(part, t, persistent=False)

    def neighbour_mask(self, rows: torch.Tensor, num_genes: int) -> torch.Tensor:
        """(R, N) bool: the support of ``Ã_i`` for each row ``i`` in ``rows``."""
        seg, entry = row_entries(rows, self.crow)
        mask = torch.zeros(rows.numel(), num_genes, dtype=torch.bool, device=rows.device)
        mask[seg, self.col[entry]] = True
        return mask


class GraphRegularizer(nn.Module):
    """``λ_k · mean_{i ∈ I_k} KL(Ã^(k)_i ‖ α_i)`` for every tied graph ``k`` (see the module docstring).

    Args:
        graphs: graph name -> :class:`GeneGraph` (at least the tied ones).
        config: the parsed ``graph_reg`` (:func:`parse_graph_reg`).
        added: (N,) mask of added genes (never rows or targets).
        generator: where the rows are drawn from (None: the global torch RNG).
    """

    def __init__(
        self,
        graphs: Mapping[str, GeneGraph],
        config: Mapping[str, GraphRegConfig],
        added: np.ndarray,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.config = dict(config)
        self.names = list(self.config)
        self.generator, self.added, self.all_graphs = generator, added, graphs
        self.graphs = nn.ModuleList(GraphRows(graphs[n], added, c.transpose) for n, c in self.config.items())
        self._others: dict[str, GraphRows] = {}  # graphs that are not tied, built on demand (monitoring)

    def __contains__(self, name: str) -> bool:
        return name in self.config

    def rows_of(self, name: str) -> GraphRows:
        """The CSR ``Ã`` and valid rows of graph ``name``: a tied graph's own, any other graph's on demand."""
        if name in self.config:
            return self.graphs[self.names.index(name)]
        if name not in self.all_graphs:
            raise unknown_name_error("graph", name, list(self.all_graphs))
        device = self.graphs[0].valid.device if len(self.graphs) else torch.device("cpu")
        if name not in self._others:
            self._others[name] = GraphRows(self.all_graphs[name], self.added)
        return self._others[name].to(device)

    def sample(self, name: str, n: int | None = None) -> torch.Tensor:
        """Valid rows of ``name`` drawn without replacement (``n`` defaults to a tied graph's configured rows)."""
        if n is None and name in self.config:
            n = self.config[name].rows
        return sample_rows(self.rows_of(name).valid, n, self.generator)

    def resolve(self, name: str, rows: int | torch.Tensor | Sequence[int] | None) -> torch.Tensor:
        """Rows of graph ``name``: sampled (None or a count) or given (checked to be valid rows)."""
        if rows is None or isinstance(rows, int):
            return self.sample(name, rows)
        valid = self.rows_of(name).valid
        rows = torch.as_tensor(rows, dtype=torch.long, device=valid.device)
        if not bool(torch.isin(rows, valid).all()):
            raise ValueError(f"rows include genes that are not valid rows of graph {name!r}")
        return rows

    def loss(
        self,
        name: str,
        layer_inputs: Sequence[torch.Tensor],
        attentions: Sequence[nn.Module],
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``λ · mean KL`` of graph ``name`` over its tied layers (and the samples of a batched input).

        ``layer_inputs[ℓ]`` is layer ℓ's LayerNorm'd input, (1 + N, d) or (S, 1 + N, d) for S sequences;
        ``attentions[ℓ]`` that layer's self-attention. ``rows`` default to a fresh sample.
        """
        if name not in self.config:
            raise ValueError(f"graph {name!r} is not regularised; regularised: {', '.join(self.names) or 'none'}")
        cfg, g = self.config[name], self.rows_of(name)
        rows = self.sample(name) if rows is None else rows
        if rows.numel() == 0:
            return layer_inputs[0].new_zeros(()).float()
        kl = []
        for layer in cfg.layers:
            log_alpha = head_log_attention(layer_inputs[layer], attentions[layer], cfg.head, rows)
            kl.append(row_kl(log_alpha, rows, g.crow, g.col, g.val).mean())
        return cfg.weight * torch.stack(kl).mean()

    def forward(self, layer_inputs: Sequence[torch.Tensor], attentions: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
        """``{"graph/<name>": λ·KL}`` for every tied graph, each on freshly sampled rows."""
        return {f"graph/{name}": self.loss(name, layer_inputs, attentions) for name in self.names}
