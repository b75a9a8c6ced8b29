"""Real measured screens shipped with the package (``data/<name>/``), built into HDF5 datasets on demand.

``costanzo2016-metabolic`` (see ``data/README.md``): every measured digenic interaction score ε of the
nonessential × nonessential deletion network of Costanzo et al. 2016 among 715 metabolic genes (221,051
pairs), and the SGA single-mutant fitness of 3,974 deletion strains at 30 °C. Singles carry ``fitness``,
pairs carry ``epsilon``; the other column is not measured (NaN). Rows naming genes that are not in the
genome are reported (count, names, line numbers) and written to a rejects file, never dropped silently.

``build_real_dataset(name)`` writes ``data/<name>.h5`` (the :class:`~cellformer.data.dataset.PerturbationData`
format) with a seeded random 80/10/10 split of the records stored; training configs choose their own split
(``random`` or ``gene_holdout`` with ``singles_in_train``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellformer.data.dataset import PerturbationData
from cellformer.data.splits import random_split
from cellformer.data.table import ImportReport, import_table
from cellformer.defaults import DATA_DIR
from cellformer.errors import unknown_name_error
from cellformer.genome import Genome, yeast_genome
from cellformer.paths import check_outputs


@dataclass(frozen=True)
class RealScreen:
    """A shipped real screen: its source tables (under ``data/``) and a one-line description."""

    name: str
    tables: tuple[str, ...]
    description: str

    @property
    def default_path(self) -> Path:
        """Where :func:`build_real_dataset` writes it by default (``data/<name with _>.h5``)."""
        return DATA_DIR / f"{self.name.replace('-', '_')}.h5"


#: name -> the shipped real screen
REAL_SCREENS: dict[str, RealScreen] = {
    "costanzo2016-metabolic": RealScreen(
        "costanzo2016-metabolic",
        ("costanzo2016/sga_smf_30C_deletion.tsv.gz", "costanzo2016/costanzo2016_nxn_metabolic_epsilon.tsv.gz"),
        "Costanzo et al. 2016 digenic epsilon (nonessential x nonessential deletions, metabolic genes) and SGA "
        "single-mutant fitness at 30 C (Usaj et al. 2017 scoring pipeline)",
    ),
}


def real_screen(name: str) -> RealScreen:
    """The shipped real screen called ``name`` (unknown names raise with the list and close matches)."""
    if name not in REAL_SCREENS:
        raise unknown_name_error("real screen", name, REAL_SCREENS)
    return REAL_SCREENS[name]


def concatenate(parts: list[PerturbationData], description: str = "") -> PerturbationData:
    """One dataset holding the records of ``parts`` in order; phenotype columns are the union (in order of
    first appearance), NaN where a part has no such column. Parts must share genes and heterologous genes."""
    first = parts[0]
    for p in parts[1:]:
        if p.genes != first.genes or p.heterologous != first.heterologous:
            raise ValueError("datasets to concatenate must share the genome (genes and heterologous genes)")
    names: list[str] = []
    for p in parts:
        names += [n for n in p.phenotype_names if n not in names]
    blocks = []
    for p in parts:
        block = np.full((len(p), len(names)), np.nan, dtype=np.float32)
        for j, n in enumerate(p.phenotype_names):
            block[:, names.index(n)] = p.phenotypes[:, j]
        blocks.append(block)
    sizes = np.concatenate([p.set_sizes for p in parts])
    return PerturbationData(
        genes=first.genes,
        offsets=np.concatenate([[0], np.cumsum(sizes)]),
        gene_index=np.concatenate([p.gene_index for p in parts]),
        types=np.concatenate([p.types for p in parts]),
        phenotypes=np.concatenate(blocks),
        phenotype_names=names,
        heterologous=dict(first.heterologous),
        genome_hash=first.genome_hash,
        genome_name=first.genome_name,
        description=description or first.description,
    )


def build_real_dataset(
    name: str,
    out: str | Path | None = None,
    genome: Genome | None = None,
    seed: int = 0,
    root: Path = DATA_DIR,
) -> tuple[PerturbationData, list[ImportReport]]:
    """Import the shipped tables of real screen ``name`` over ``genome`` (default: the embedded yeast genome)
    and write ``out`` (default ``data/<name>.h5``). Returns the dataset and one import report per table.

    Rows whose genes are not in the genome are skipped into ``<out stem>.<table stem>.rejects.tsv`` and
    counted in the reports (printed by the CLI).
    """
    screen = real_screen(name)
    genome = yeast_genome() if genome is None else genome
    out = Path(out) if out is not None else screen.default_path
    check_outputs({"dataset": out}, force=True)
    parts, reports = [], []
    for table in screen.tables:
        path = root / table
        stem = Path(table).name.split(".")[0]
        rejects = out.with_name(f"{out.name.split('.')[0]}.{stem}.rejects.tsv")
        data, report = import_table(path, genome, skip_bad_rows=True, rejects_path=rejects)
        if report.rejects_path is None:
            rejects.unlink(missing_ok=True)  # an earlier build's rejects must not outlive it
        parts.append(data)
        reports.append(report)
    data = concatenate(parts, description=screen.description)
    data.attrs = {"source": name, "split_seed": str(seed)}
    data.split = random_split(len(data), seed=seed)
    data.save(out)
    return data, reports
