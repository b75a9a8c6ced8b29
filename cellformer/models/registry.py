"""Name -> model class, so configs and checkpoints can say ``model: dango``."""

from __future__ import annotations

import importlib

from cellformer.errors import unknown_name_error
from cellformer.genome import Genome
from cellformer.graphs import GraphSet
from cellformer.models.base import PhenotypeModel

#: model name -> "module:Class"
MODELS: dict[str, str] = {
    "cellformer": "cellformer.models.cellformer:CellFormer",
    "dango": "cellformer.models.baselines.dango:Dango",
    "lazy": "cellformer.models.baselines.lazy:LazySubgraph",
    "neighbor": "cellformer.models.baselines.neighbor:NeighborSubgraph",
    "additive": "cellformer.models.baselines.additive:Additive",
    "graph_smoothing": "cellformer.models.baselines.graph_smoothing:GraphSmoothing",
    "per_gene": "cellformer.models.baselines.per_gene:PerGene",
}


def model_class(name: str) -> type[PhenotypeModel]:
    """The class registered under ``name`` (unknown names raise with the list and close matches)."""
    if name not in MODELS:
        raise unknown_name_error("model", name, MODELS)
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, genome: Genome, graphs: GraphSet, phenotype_names: list[str], **hparams) -> PhenotypeModel:
    """Instantiate model ``name`` with the data context and its hyper-parameters (and target-scaling buffers)."""
    model = model_class(name)(genome, graphs, list(phenotype_names), **hparams)
    model.register_target_scaling(len(phenotype_names))
    return model
