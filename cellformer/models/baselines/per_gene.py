"""Per-gene effects in closed form: the reviewer's first question for a screen of interactions.

For every phenotype, ``y_S ≈ b + μ·|S| + Σ_{i∈S} δ_i`` (per gene and perturbation type), a ridge fit on the
training records in which each gene is shrunk towards the average gene ``μ``, with ``λ`` chosen among
``penalties`` by 5-fold cross-validation on the training records. For an interaction score this is the
per-gene mean model ``ε_ab ≈ μ + m_a + m_b`` ("hub" genes interact more); a fitness-like phenotype is
fitted log-additively (the product of per-gene fitnesses). Genes without training records read as the
average gene. It is the same closed-form fit CellFormer reads as its ``additive`` set feature
(:class:`~cellformer.models.baselines.additive.CrossFittedAdditive`), here predicting on its own.
"""

from __future__ import annotations

import numpy as np

from cellformer.data.dataset import PerturbationBatch, PerturbationData
from cellformer.errors import UserError
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import ModelOutput, PhenotypeModel
from cellformer.models.baselines.additive import CrossFittedAdditive


class PerGene(PhenotypeModel):
    """Per-gene ridge effects (see the module docstring); no gradient training.

    Args:
        genome: the genome (heterologous genes have no effect).
        graphs: unused (accepted for the common constructor).
        phenotype_names: output columns.
        penalties: the ridge penalties λ cross-validated per phenotype.
        folds: cross-validation folds.
    """

    def __init__(
        self,
        genome: Genome,
        graphs: GraphSet,
        phenotype_names: list[str],
        penalties: list[float] | None = None,
        folds: int = 5,
    ):
        super().__init__()
        penalties = [0.1, 1.0, 10.0, 100.0, 1000.0] if penalties is None else [float(x) for x in penalties]
        if not penalties or any(not np.isfinite(x) or x <= 0 for x in penalties):
            raise UserError(f"per_gene: penalties must be positive numbers, got {penalties}")
        self.phenotype_names = list(phenotype_names)
        self.hparams_dict = {"penalties": penalties, "folds": folds}
        self.num_genes = len(genome)
        self.estimate = CrossFittedAdditive(self.num_genes, self.phenotype_names, folds, tuple(penalties))

    def fit_records(self, data: PerturbationData, train_rows: np.ndarray) -> None:
        """Fit the per-gene effects on the training records (λ by cross-validation)."""
        self.estimate.fit(data, np.asarray(train_rows), self.phenotype_names, *self.target_scaling())

    def forward(self, batch: PerturbationBatch) -> ModelOutput:
        mean, std = self.target_scaling()
        est = self.estimate(batch.gene_index, batch.types, batch.ptr, mean, std, cross_fitted=False)
        return ModelOutput(pred=self.unscale(est[:, : len(self.phenotype_names)]))
