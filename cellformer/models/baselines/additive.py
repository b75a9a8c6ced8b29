"""Additive: the no-interaction baseline (a floor every interaction model must beat).

Each gene ``i`` has a learned effect ``a_ip`` per phenotype ``p``. How a set ``S`` combines them
depends on the phenotype's kind:

* ``multiplicative`` (fitness-like, the default for names containing ``fitness`` or ``growth``):
  ``f(S) = exp(b_p + sum_{i in S} a_ip)`` -- the product of per-gene single-mutant fitnesses
  ``exp(a_ip)`` (log-additive), times a learned wild-type level ``exp(b_p)`` (1 at initialisation).
  This is exactly the null model that defines genetic interactions (``eps = f_ij - f_i f_j``).
* ``interaction`` (names containing ``epsilon``, ``eps``, ``tau`` or ``interaction``): the model has
  no interaction term by construction, so it predicts one learned constant ``b_p`` per phenotype
  (the best constant under MSE is the mean of the training scores).
* ``additive`` (anything else): ``b_p + sum_{i in S} a_ip``.

Everything is a parameter trained by the same loss as the other models; the kinds can be
overridden by name with ``kinds={"my_pheno": "multiplicative"}``. Multiplicative phenotypes are
computed in original units (a product of fitnesses is not a product of standardised scores); the
other kinds are computed in standardised units and unscaled.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from cellformer.data.dataset import PerturbationBatch
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel

KINDS = ("multiplicative", "interaction", "additive")

#: Optimiser settings at which the additive model has converged on the embedded default (AdamW, batch 256,
#: cosine schedule): tuned by a sweep with ``cellformer fit --config configs/additive.yaml`` over lr 0.01,
#: 0.03, 0.05, 0.1, 0.3 and 2,000 / 4,000 / 8,000 steps, keeping the setting after which more steps or
#: another lr no longer raise the validation fitness Pearson (lr ≥ 0.1 diverges). configs/additive.yaml uses it.
TUNED: dict[str, float | int] = {"lr": 0.03, "steps": 4000}


def phenotype_kind(name: str) -> str:
    """Default kind of a phenotype from its name (see module docstring)."""
    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    if tokens & {"epsilon", "eps", "tau", "interaction", "gi", "digenic", "trigenic"}:
        return "interaction"
    if any(t.startswith(("fitness", "growth")) for t in tokens):
        return "multiplicative"
    return "additive"


class Additive(PhenotypeModel):
    """Per-gene effects combined without interactions.

    Args:
        genome: the genome; heterologous genes beyond it get no effect (they contribute 0).
        graphs: unused (accepted for the common constructor).
        phenotype_names: output columns.
        kinds: optional ``{phenotype: "multiplicative" | "interaction" | "additive"}`` overrides.
        max_log: clamp of the multiplicative exponent (keeps ``exp`` finite early in training).
    """

    def __init__(
        self,
        genome: Genome,
        graphs: GraphSet,
        phenotype_names: list[str],
        kinds: dict[str, str] | None = None,
        max_log: float = 10.0,
    ):
        super().__init__()
        self.phenotype_names = list(phenotype_names)
        kinds = dict(kinds or {})
        unknown = set(kinds) - set(self.phenotype_names)
        if unknown:
            raise KeyError(f"kinds given for unknown phenotypes {sorted(unknown)}; have {self.phenotype_names}")
        self.kinds = [kinds.get(n, phenotype_kind(n)) for n in self.phenotype_names]
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ValueError(f"unknown phenotype kind(s) {bad}; expected one of {KINDS}")
        self.hparams_dict = {"kinds": kinds, "max_log": max_log}
        self.num_genes = len(genome)
        self.max_log = max_log
        p = len(self.phenotype_names)
        self.effect = nn.Parameter(torch.zeros(self.num_genes, p))
        self.bias = nn.Parameter(torch.zeros(p))
        self.register_buffer(
            "multiplicative", torch.tensor([k == "multiplicative" for k in self.kinds]), persistent=False
        )
        self.register_buffer("uses_genes", torch.tensor([k != "interaction" for k in self.kinds]), persistent=False)

    def forward(self, batch: PerturbationBatch) -> ModelOutput:
        bsz, p = batch.num_samples, len(self.phenotype_names)
        known = batch.gene_index < self.num_genes
        effects = self.effect[batch.gene_index.clamp_max(self.num_genes - 1)] * known.unsqueeze(1)
        summed = torch.zeros(bsz, p, device=self.bias.device, dtype=effects.dtype).index_add_(0, batch.batch, effects)
        summed = summed * self.uses_genes
        linear = self.bias + summed
        # a product of fitnesses lives in original units (exp(0) = 1 is the wild type); the other kinds are
        # fitted in standardised units like every model
        pred = torch.where(self.multiplicative, torch.exp(linear.clamp(max=self.max_log)), self.unscale(linear))
        return ModelOutput(pred=pred)
