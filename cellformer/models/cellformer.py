"""CellFormer: a whole-genome transformer with graph-regularised attention heads.

Reading order (design note, sections 2-5):

1. :class:`CellFormerConfig` -- every hyper-parameter, with its meaning and range.
2. :meth:`CellFormer.embed` -- one token per gene (:mod:`cellformer.models.tokens`: sequence features,
   identity or the unknown-gene vector, graph context, per-gene record inputs) behind a learned CLS token,
   no positional encoding; heterologous genes of a genome variant are extra tokens from their sequence.
3. :meth:`CellFormer.encode` -- pre-LN transformer blocks (:mod:`cellformer.models.layers`) over the whole
   genome, once per training step on the wild type (plus once per heterologous variant in the batch).
4. Graph regularisation (:mod:`cellformer.models.graph_reg`) -- ``λ · KL(Ã_i ‖ α_i)`` on sampled rows of the
   tied heads, on the same wild-type pass.
5. :meth:`CellFormer.forward` -- the perturbation head ``g(F(G), S)`` (:mod:`cellformer.models.head`) reads
   the encoding and the set features of :mod:`cellformer.models.record_features` (what the graphs and the
   training records say about S; no record sees its own label).
6. :meth:`CellFormer.fit_records` -- what is fitted from the training records without gradients, once at
   ``fit``: which genes were seen, and the record tables.

``forward(batch)`` returns ``ModelOutput(pred (B, P), losses, extras)``; ``losses`` holds
``graph/<name> = λ·KL`` for every regularised graph in train *and* eval mode (eval values are a
monitoring signal; pass ``graph_losses=False`` to skip them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cellformer.data.dataset import PerturbationBatch, PerturbationData
from cellformer.errors import UserError, did_you_mean, unknown_name_error
from cellformer.genome.genome import Genome
from cellformer.graphs.graph import GraphSet
from cellformer.models import diagnostics
from cellformer.models.base import ModelOutput, PhenotypeModel, check_fields
from cellformer.models.graph_reg import GraphRegularizer, head_log_attention, parse_graph_reg
from cellformer.models.head import POOLS, EncoderOutput, PerturbationHead
from cellformer.models.layers import Block, ValueAttention
from cellformer.models.record_features import RecordFeatures
from cellformer.models.tokens import GeneTokens


@dataclass
class CellFormerConfig:
    """CellFormer's hyper-parameters (``model_args`` of a config; saved in every checkpoint).

    Attributes:
        d_model, n_layers, n_heads, d_ff (default 4·d_model): transformer size.
        dropout: on embeddings, residual branches and the head. attn_dropout: on attention probabilities
            (default 0: on CPU any value > 0 makes SDPA fall back to the math kernel, ~25x slower at N=6410).
        pool: how the set is pooled into ``q_S``: ``mean``, ``sum`` or ``attention``.
        graph_reg: graph name -> ``{layer (int or list), head, weight: λ (default 1), rows (default 256, None =
            all valid rows), transpose (default false)}``.
        graph_inputs: graphs whose neighbourhoods build part of every token and of the set features (None =
            all graphs of the data, [] = none).
        input_hops, structural_dim: hops of neighbour-averaged identities and spectral-encoding vectors per
            input graph (0 = none).
        identity_dropout: share of gene identities replaced by the unknown-gene vector at each training step.
        identity_init: sd of the initial gene identities (large: the identity dominates a token at first; small:
            the sequence features, graph context and record inputs do).
        mask_unseen: genes in no training record always use the unknown-gene identity.
        pair_features: the members' mean pairwise product ``p_S`` in the readout.
        additive_path: a per-gene effect ``Σ_{i∈S} a(φ(h_i, m_i))`` added to the prediction.
        readout_hidden, gated_readout: width (default 4·d_model) and GEGLU gating of the readout MLP.
        label_inputs: per-gene token input: the neighbours' training single mutants (never the gene's own).
        pair_graph_features, smoothing_features, member_singles, member_pairs, additive_features: the set
            features of :mod:`cellformer.models.record_features` (adjacent member pairs, the neighbour-
            substitution estimate, the members' own singles, a larger set's measured member pairs, the
            cross-fitted additive estimate).
        smoothing_neighbours: neighbours kept per gene for the substitution estimate.
        profile_dim: per phenotype, the dimensions of each gene's interaction-profile token input (a sketch of
            its training records of two or more genes, from which a training batch's own records are removed;
            :class:`~cellformer.models.record_features.InteractionProfiles`); 0 = none.
        additive_folds: folds of the cross-fitted additive estimate (≥ 2).
        profile_impute: weight of the profile inference (0 = off; needs ``profile_dim``): a linear map reads
            every gene's interaction profile off its encoder output, fitted (``profile_impute · MSE``) to the
            measured profiles of the genes hidden in each step; genes without a measured one in a pass (held
            out or hidden) read it in the profile product. The encoder infers it from related genes.
        impute_attention: the encoder layer whose heads also infer profiles directly, as their attention-weighted
            mean of the measured profiles (:class:`~cellformer.models.layers.ValueAttention`, added to the linear
            map); None = the linear map alone. Needs ``profile_impute`` and that layer.
        inferred_pairs: the readout also reads the member pairs' product of the *inferred* profiles of every
            gene, measured or not: the encoder's estimate of a profile from related genes. Needs ``profile_impute``.
        row_seed: seed of the model's own generator (graph rows, identity dropout), so that they never
            shift the global RNG stream that orders batches.
    """

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None
    dropout: float = 0.1
    attn_dropout: float = 0.0
    pool: str = "mean"
    graph_reg: dict[str, dict] | None = None
    graph_inputs: list[str] | None = None
    input_hops: int = 2
    structural_dim: int = 16
    identity_dropout: float = 0.3
    identity_init: float = 1.0
    mask_unseen: bool = True
    pair_features: bool = True
    additive_path: bool = True
    readout_hidden: int | None = None
    gated_readout: bool = True
    label_inputs: bool = True
    pair_graph_features: bool = True
    smoothing_features: bool = True
    smoothing_neighbours: int = 64
    profile_dim: int = 64
    member_singles: bool = True
    member_pairs: bool = True
    additive_features: bool = True
    additive_folds: int = 5
    profile_impute: float = 0.0
    impute_attention: int | None = None
    inferred_pairs: bool = False
    row_seed: int = 0

    #: (lowest, highest, whether the highest is allowed) of the numeric fields
    RANGES = {
        "d_model": (1, None, True), "n_layers": (0, None, True), "n_heads": (1, None, True),
        "d_ff": (1, None, True), "dropout": (0.0, 1.0, False), "attn_dropout": (0.0, 1.0, False),
        "input_hops": (0, None, True), "structural_dim": (0, None, True), "identity_dropout": (0.0, 1.0, False),
        "identity_init": (0.0, None, True),
        "readout_hidden": (1, None, True), "smoothing_neighbours": (1, None, True), "additive_folds": (2, None, True),
        "profile_dim": (0, None, True), "profile_impute": (0.0, None, True),
    }  # fmt: skip

    @classmethod
    def from_dict(cls, values: Mapping | None) -> CellFormerConfig:
        """Build from ``model_args``; an unknown key or a value of the wrong type or range is a UserError."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values or {}:
            if key not in names:
                raise UserError(f"unknown CellFormer hyper-parameter {key!r}{did_you_mean(key, names)}")
        return cls(**dict(values or {}))

    def __post_init__(self) -> None:
        check_fields(self, self.RANGES, "model_args")
        if self.d_model % self.n_heads:
            raise UserError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.pool not in POOLS:
            raise UserError(f"unknown pool {self.pool!r}; choose one of {', '.join(POOLS)}")
        if self.profile_impute > 0 and self.profile_dim == 0:
            raise UserError("profile_impute > 0 imputes interaction profiles: it needs profile_dim > 0")
        if self.inferred_pairs and not self.profile_impute > 0:
            raise UserError("inferred_pairs reads the inferred interaction profiles: it needs profile_impute > 0")
        if (i := self.impute_attention) is not None and not (self.profile_impute > 0 and 0 <= i < self.n_layers):
            raise UserError(f"impute_attention={i} needs profile_impute > 0 and a layer in 0..{self.n_layers - 1} "
                            f"(n_layers={self.n_layers}); set it to null to turn it off")  # fmt: skip

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CellFormer(PhenotypeModel):
    """Whole-genome transformer ``F(G)`` + perturbation head ``g(F(G), S)`` with graph-regularised heads.

    Args:
        genome: the base genome (features (N, F); ``added`` genes get the ``unknown_gene`` identity).
        graphs: the graphs available for regularisation, graph inputs and attention monitoring.
        phenotype_names: output columns.
        **hparams: the fields of :class:`CellFormerConfig`.
    """

    splits_encoder = True
    config_class = CellFormerConfig

    def __init__(self, genome: Genome, graphs: GraphSet, phenotype_names: list[str], **hparams):
        super().__init__()
        cfg = self.config = CellFormerConfig.from_dict(hparams)
        inputs = list(graphs.names) if cfg.graph_inputs is None else list(cfg.graph_inputs)
        for name in inputs:
            if name not in graphs:
                raise unknown_name_error("graph in graph_inputs", name, graphs.names)
        self.phenotype_names, self.graph_inputs, self.graphs = list(phenotype_names), inputs, graphs
        self.d_model, self.n_heads, self.n_layers = cfg.d_model, cfg.n_heads, cfg.n_layers
        self.graph_reg = parse_graph_reg(cfg.graph_reg, list(graphs.names), cfg.n_layers, cfg.n_heads)
        self.hparams_dict = cfg.to_dict() | {"graph_reg": {k: c.to_dict() for k, c in self.graph_reg.items()},
                                             "graph_inputs": inputs}  # fmt: skip
        self.generator = torch.Generator().manual_seed(cfg.row_seed)
        self.num_genes, self.num_features = genome.features.shape
        self.genome_hash, self.added_mask_np = genome.hash, np.asarray(genome.added, dtype=bool)
        d = cfg.d_model
        self.records = RecordFeatures(
            self.num_genes, self.phenotype_names, graphs, inputs, cfg.pair_graph_features, cfg.smoothing_features,
            cfg.member_singles, cfg.member_pairs, cfg.additive_features, cfg.label_inputs, cfg.additive_folds,
            cfg.smoothing_neighbours, cfg.profile_dim, cfg.inferred_pairs,
        )  # fmt: skip
        self.tokens = GeneTokens(genome.features, self.added_mask_np, graphs, inputs, d, cfg.input_hops,
                                 cfg.structural_dim, self.records.token_width)  # fmt: skip
        self.cls_token = nn.Parameter(torch.zeros(d))
        self.embed_drop = nn.Dropout(cfg.dropout)
        block = lambda: Block(d, cfg.n_heads, cfg.d_ff or 4 * d, cfg.dropout, cfg.attn_dropout)  # noqa: E731
        self.blocks = nn.ModuleList(block() for _ in range(cfg.n_layers))
        self.norm_f = nn.LayerNorm(d)
        self.regularizer = GraphRegularizer(graphs, self.graph_reg, self.added_mask_np, self.generator)
        self.head = PerturbationHead(
            d, len(self.phenotype_names), cfg.pool, cfg.dropout, self.num_genes, cfg.pair_features, cfg.additive_path,
            n_extra=self.records.width, readout_hidden=cfg.readout_hidden, gated_readout=cfg.gated_readout,
        )  # fmt: skip
        profiles = self.records.profiles
        self.profile_head = nn.Linear(d, profiles.width) if cfg.profile_impute > 0 and profiles is not None else None
        self.profile_attention = None if cfg.impute_attention is None else ValueAttention(cfg.n_heads, profiles.width)
        self._frozen_encoding: EncoderOutput | None = None
        self.freeze_encoding_cache = False
        self.apply(self._init_weights)
        # With no informative token input, identities must start at unit scale: at 0.02 the shared residual
        # updates swamp them after the LayerNorms and the gene embeddings collapse to one direction. With
        # record inputs a unit-scale identity drowns them instead (identity_init).
        nn.init.normal_(self.tokens.gene_embed.weight, std=cfg.identity_init)
        nn.init.normal_(self.tokens.unknown_gene, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ fitting from records
    def fit_records(self, data: PerturbationData, train_rows: np.ndarray) -> None:
        """Mark the genes of the training records as seen and fit the record tables (once, at ``fit``)."""
        rows = np.asarray(train_rows, dtype=np.int64)
        in_train = np.zeros(len(data), dtype=bool)
        in_train[rows] = True
        genes = data.gene_index[np.repeat(in_train, data.set_sizes)]
        seen = np.zeros(self.num_genes, dtype=bool)
        seen[genes[(genes >= 0) & (genes < self.num_genes)]] = True
        self.tokens.seen.copy_(torch.from_numpy(seen))
        self.records.fit(data, rows, *self.target_scaling())

    # ------------------------------------------------------------------ encoder
    def embed(
        self, added_features: Sequence[torch.Tensor | None], batch: PerturbationBatch | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Tokens (V, 1 + L, d), key mask (V, 1 + L) (None when nothing is padded), the genes whose identity
        is dropped in this pass (training) or None, and the per-gene record inputs of the pass (or None).

        ``added_features[v]`` are the (n_v, F) features of the genes variant ``v`` appends to the base
        genome (None or empty for none); an empty list means the wild type alone. ``batch``: the training
        batch, whose records leave the per-gene record inputs for this pass.
        """
        dropout = self.config.identity_dropout if self.training else 0.0
        identity, dropped = self.tokens.identities(dropout, self.config.mask_unseen, self.generator)
        own = None if batch is None else ((batch.gene_index, batch.ptr, batch.batch), batch.y)
        inputs = self.records.token_inputs(own and own[0], *self.target_scaling(), own and own[1], dropped)
        base = self.tokens(identity, inputs)
        cls = self.cls_token.to(base.dtype)[None]
        added = list(added_features) or [None]
        n_added = [0 if a is None or a.numel() == 0 else a.shape[0] for a in added]
        width = max(n_added)
        seqs = []
        for a, n in zip(added, n_added, strict=True):
            parts = [cls, base]
            if n:
                if a.shape[-1] != self.num_features:
                    raise ValueError(f"added genes have {a.shape[-1]} features, the genome {self.num_features}")
                parts.append(self.tokens.added(a))
            if n < width:
                parts.append(base.new_zeros(width - n, self.d_model))
            seqs.append(torch.cat(parts))
        x = torch.stack(seqs)
        if width == 0 or len(set(n_added)) == 1:
            return x, None, dropped, inputs
        pad = torch.arange(width, device=x.device)[None, :] >= torch.tensor(n_added, device=x.device)[:, None]
        key_mask = torch.cat([torch.ones(len(added), 1 + self.num_genes, dtype=torch.bool, device=x.device), ~pad], 1)
        return x, key_mask, dropped, inputs

    def encode(
        self, added_features: Sequence[torch.Tensor | None] = (), batch: PerturbationBatch | None = None
    ) -> EncoderOutput:
        """Run the transformer once over every variant (variant 0 first); see :class:`EncoderOutput`.
        ``batch``: a training batch (its records leave the per-gene record inputs, :meth:`embed`)."""
        x, key_mask, dropped, inputs = self.embed(added_features, batch)
        x = self.embed_drop(x)
        layer_inputs = []
        for block in self.blocks:
            x, h = block(x, key_mask)
            layer_inputs.append(h[0, : 1 + self.num_genes])
        x = self.norm_f(x)
        V, L = x.shape[0], x.shape[1] - 1
        mask = torch.ones(V, L, dtype=torch.bool, device=x.device) if key_mask is None else key_mask[:, 1:]
        wild_type = not len(added_features) or added_features[0] is None or added_features[0].numel() == 0
        imputed = None if self.profile_head is None else self.profile_head(x[0, 1 : 1 + self.num_genes])
        if self.profile_attention is not None:  # the tied layer's heads read the measured profiles
            i, profiles = self.config.impute_attention, self.records.profile_inputs(inputs)
            keys = self.records.profiles.measured(dropped, groups=True)  # measured, not hidden in this pass
            imputed = imputed + self.profile_attention(layer_inputs[i][1:], self.blocks[i].attn, profiles, keys)
        return EncoderOutput(x[:, 0], x[:, 1:], mask, layer_inputs, wild_type, hidden=dropped, record_inputs=inputs,
                             imputed=imputed)  # fmt: skip

    def encode_genome(self, added_features: torch.Tensor | None = None) -> EncoderOutput:
        """The encoder output for one genome variant (V = 1): the wild type, or it plus added genes."""
        return self.encode([added_features])

    # ------------------------------------------------------------------ perturbation head
    def _predict(self, enc, gene_index, types, ptr, batch, variant, return_attention, training: bool):
        """Standardised predictions (B, P) and β of the head from an encoding, with the records' set features
        (training: the sets are training records, and genes hidden in this pass hide their records)."""
        mean, std = self.target_scaling()
        hidden = enc.hidden if training else None
        extra = self.records(gene_index, types, ptr, batch, mean, std, training, hidden, enc.record_inputs,
                             enc.imputed)  # fmt: skip
        return self.head(enc, gene_index, types, ptr, batch, variant, return_attention, extra)

    def predict_from_encoding(
        self, enc: EncoderOutput, gene_index: torch.Tensor, types: torch.Tensor, ptr: torch.Tensor, batch: torch.Tensor,
        variant: torch.Tensor | None = None, return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Predictions (B, P) of the head alone from a (possibly cached) encoding, in original units.

        ``variant`` (B,) picks each sample's variant in ``enc`` (default all 0). With ``return_attention``
        returns ``(pred, beta)``, beta (B, L) the cross-attention over genes.
        """
        if variant is None:
            variant = torch.zeros(ptr.numel() - 1, dtype=torch.long, device=ptr.device)
        pred, beta = self._predict(enc, gene_index, types, ptr, batch, variant, return_attention, training=False)
        pred = self.unscale(pred)
        return (pred, beta) if return_attention else pred

    def forward(
        self, batch: PerturbationBatch, return_attention: bool = False, graph_losses: bool = True
    ) -> ModelOutput:
        """Predict the batch; ``losses['graph/<name>'] = λ·KL`` for each regularised graph (train and eval).

        ``extras['beta']`` (B, L) holds the head's cross-attention when ``return_attention``.
        """
        added = list(batch.added_features) or [None]
        if batch.variant.numel() and int(batch.variant.max()) >= len(added):
            raise ValueError(f"batch.variant refers to variant {int(batch.variant.max())} of {len(added)}")
        enc = self.encode(added, batch) if self.training else self._encode_for_batch(added)
        pred, beta = self._predict(enc, batch.gene_index, batch.types, batch.ptr, batch.batch, batch.variant,
                                   return_attention, training=self.training)  # fmt: skip
        losses = self.regularizer(enc.layer_inputs, self.attentions) if graph_losses else {}
        if enc.imputed is not None and self.training and enc.hidden is not None:  # the imputation task
            own = (batch.gene_index, batch.ptr, batch.batch)
            mse = self.records.imputation_loss(enc.imputed, enc.hidden, own, batch.y, *self.target_scaling())
            losses["profile/impute"] = self.config.profile_impute * mse
        return ModelOutput(pred=self.unscale(pred), losses=losses, extras={"beta": beta} if return_attention else {})

    def _encode_for_batch(self, added: list) -> EncoderOutput:
        """The encoder output for a batch; reused across batches while ``freeze_encoding_cache`` is set.

        An evaluation loop (validation, test, predict) sets the flag for the duration of an epoch, in which
        the weights do not change, so the wild-type encoder runs once per epoch instead of once per batch.
        Batches with heterologous variants are always encoded afresh.
        """
        wild_only = len(added) == 1 and (added[0] is None or added[0].numel() == 0)
        if not (self.freeze_encoding_cache and wild_only and not self.training and not torch.is_grad_enabled()):
            return self.encode(added)
        if self._frozen_encoding is None:
            self._frozen_encoding = self.encode(added)
        return self._frozen_encoding

    def set_encoding_cache(self, enabled: bool) -> None:
        """Turn the per-epoch encoding cache on (evaluation loops) or off (and drop what it holds)."""
        self.freeze_encoding_cache = enabled
        self._frozen_encoding = None

    # ------------------------------------------------------------------ graph regularisation
    @property
    def attentions(self) -> list[nn.Module]:
        """Each block's self-attention (what the graph terms read)."""
        return [block.attn for block in self.blocks]

    def _wild_type(self, enc: EncoderOutput | None) -> EncoderOutput:
        enc = self.encode_genome() if enc is None else enc
        if not enc.wild_type:
            raise ValueError("graph terms are defined on the wild-type encoding (variant 0 with no added genes)")
        return enc

    def graph_loss(
        self, name: str, rows: int | torch.Tensor | None = None, enc: EncoderOutput | None = None
    ) -> torch.Tensor:
        """``λ · mean_i KL(Ã_i ‖ α_i)`` over sampled (or given) rows of graph ``name`` (:mod:`graph_reg`)."""
        if name not in self.regularizer:
            raise ValueError(f"graph {name!r} is not regularised; regularised: {', '.join(self.graph_reg) or 'none'}")
        enc = self._wild_type(enc)
        return self.regularizer.loss(name, enc.layer_inputs, self.attentions, self.regularizer.resolve(name, rows))

    # ------------------------------------------------------------------ monitoring / explanation
    def attention_rows(
        self, layer: int, head: int, rows: torch.Tensor | Sequence[int], enc: EncoderOutput | None = None
    ) -> torch.Tensor:
        """(len(rows), N) attention probabilities of ``(layer, head)`` over gene keys (CLS excluded, renormalised)."""
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise ValueError(f"no (layer, head) ({layer}, {head}): {self.n_layers} layers, {self.n_heads} heads")
        enc = self._wild_type(enc)
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.cls_token.device)
        return head_log_attention(enc.layer_inputs[layer], self.blocks[layer].attn, head, rows).exp()

    def attention_alignment(self, graph_name: str, layer: int, head: int, rows=None, enc=None) -> torch.Tensor:
        """Mean attention mass on graph neighbours (:func:`cellformer.models.diagnostics.attention_alignment`)."""
        return diagnostics.attention_alignment(self, graph_name, layer, head, rows, enc)

    def monitor(self, rows: int = 256) -> dict[str, float]:
        """Health signals logged at validation (:func:`cellformer.models.diagnostics.monitor`)."""
        return diagnostics.monitor(self, rows)
