"""What a model needs to know about its data, independent of how it is trained."""

from __future__ import annotations

from dataclasses import dataclass

from cellformer.genome import Genome
from cellformer.graphs import GraphSet


@dataclass
class DataContext:
    """What a model needs to know about the data: genome, graphs and the phenotypes it predicts."""

    genome: Genome
    graphs: GraphSet
    phenotype_names: list[str]
