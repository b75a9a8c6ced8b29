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
  at least one edge that are not added genes. Rows are drawn with the global torch RNG (reproducible
  under ``torch.manual_seed``).
* The normaliser is exact (log-softmax over all N keys); extra memory is O(rows · N) per head, a
  dense N×N map is never built.

The model-facing :func:`graph_kl` works on a :class:`~cellformer.models.cellformer.CellFormer` (the tests
compare it with an O(N²) dense reference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from cellformer.errors import UserError, did_you_mean, unknown_name_error
from cellformer.graphs.graph import GeneGraph

if TYPE_CHECKING:  # pragma: no cover
    from cellformer.models.cellformer import CellFormer

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


def row_kl(log_alpha: torch.Tensor, rows: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor):
    """KL(Ã_i ‖ α_i) for each sampled row, from CSR ``Ã`` and ``log_alpha`` (R, N) of those rows.

    Only the support of ``Ã_i`` enters (0·log 0 = 0); ``log_alpha`` already holds the exact normaliser.
    """
    start, count = crow[rows], crow[rows + 1] - crow[rows]
    r = torch.arange(rows.numel(), device=rows.device)
    seg = torch.repeat_interleave(r, count)  # (E,) which sampled row each entry belongs to
    offset = torch.arange(seg.numel(), device=rows.device) - torch.repeat_interleave(count.cumsum(0) - count, count)
    entry = start[seg] + offset
    a, j = val[entry], col[entry]
    terms = a * (a.log() - log_alpha[seg, j])
    return torch.zeros(rows.numel(), dtype=terms.dtype, device=terms.device).index_add(0, seg, terms)


def head_log_attention(x: torch.Tensor, attn, head: int, rows: torch.Tensor) -> torch.Tensor:
    """log α (R, N) of one head for query genes ``rows`` over all gene keys (CLS excluded).

    ``x`` is the (1 + N, d) layer input *after* LayerNorm (CLS first) of the wild-type pass, ``attn``
    the layer's :class:`SelfAttention`. Only this head's slices of the fused qkv weight are used, so
    the gradient reaches exactly those rows. Computed in float32 even under autocast.
    """
    q_rows, k_rows = attn.head_slices(head)
    w, b = attn.qkv.weight.float(), attn.qkv.bias.float()
    with torch.autocast(x.device.type, enabled=False):
        genes = x[1:].float()
        q = F.linear(genes[rows], w[q_rows], b[q_rows])  # (R, d_h)
        k = F.linear(genes, w[k_rows], b[k_rows])  # (N, d_h)
        logits = q @ k.T / math.sqrt(q.shape[-1])
        return torch.log_softmax(logits, dim=-1)


# ---------------------------------------------------------------------- model-facing helpers
def graph_kl(model: CellFormer, name: str, rows: int | torch.Tensor | None = None, enc=None) -> torch.Tensor:
    """λ · mean sampled-row KL for regularised graph ``name`` (what ``forward`` puts in ``losses``).

    Args:
        rows: None samples the configured number of rows, an int samples that many, a tensor of gene
            indices uses exactly those rows (they must be valid rows).
        enc: an :class:`EncoderOutput` of the wild-type genome (default: encode it now).
    """
    return model.graph_loss(name, rows=rows, enc=enc)
