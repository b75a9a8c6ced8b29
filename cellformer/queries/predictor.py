"""Query a trained checkpoint: phenotypes of gene sets, on the base genome or with added genes.

A :class:`Predictor` wraps a model loaded with :func:`cellformer.models.checkpoint.load_checkpoint`.
Gene names are resolved through the checkpoint's genome (ids or aliases, case-insensitive). For models
that split the genome encoder from the perturbation head (CellFormer's ``encode_genome`` /
``predict_from_encoding``), the encoder output is computed once per genome variant and cached, so a
query only costs the head; other models (the baselines) are run through ``model(batch)``.

Genome variants: :meth:`Predictor.add_genes` / :meth:`Predictor.add_fasta` register heterologous
genes (validated coding sequences). A query that names added genes (type ``addition``) runs on the
variant genome made of the base genome plus exactly those genes — the same convention as a dataset's
heterologous records (see :class:`cellformer.data.dataset.PerturbationBatch`); queries without added
genes run on the base genome.
"""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from cellformer.data.dataset import PerturbationBatch, PerturbationType, make_batch
from cellformer.data.table import split_gene_names
from cellformer.errors import UserError, unknown_name_error
from cellformer.genome import Genome, SequenceError, read_fasta, validate_cds

DEFAULT_BATCH_SIZE = 1024


@dataclass
class PredictionTable:
    """Predictions for a list of gene sets.

    Attributes:
        genes: per query, the resolved gene ids (in the order given).
        types: per query, the perturbation type names (lower case), aligned with ``genes``.
        phenotype_names: the predicted phenotypes (columns of ``values``).
        values: ``(Q, P)`` float32 predictions.
    """

    genes: list[list[str]]
    types: list[list[str]]
    phenotype_names: list[str]
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.genes)

    def column(self, name: str) -> np.ndarray:
        """The predictions of one phenotype (unknown names raise with the list)."""
        if name not in self.phenotype_names:
            raise unknown_name_error("phenotype", name, self.phenotype_names)
        return self.values[:, self.phenotype_names.index(name)]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per query: ``genes`` (``;``-joined), ``types`` and one float per phenotype."""
        out = []
        for q, (g, t) in enumerate(zip(self.genes, self.types, strict=True)):
            row: dict[str, Any] = {"genes": ";".join(g), "types": ";".join(t)}
            row.update({p: float(v) for p, v in zip(self.phenotype_names, self.values[q], strict=True)})
            out.append(row)
        return out

    def write_tsv(self, fh: TextIO) -> None:
        """Write the table (header ``genes types <phenotypes...>``) to an open text file."""
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["genes", "types", *self.phenotype_names])
        for g, t, v in zip(self.genes, self.types, self.values, strict=True):
            w.writerow([";".join(g), ";".join(t), *(f"{x:.6g}" for x in v.tolist())])

    def to_tsv(self, path: str | Path | None = None) -> str:
        """The table as TSV text; also written to ``path`` when given."""
        return tsv_text(self.write_tsv, path)


def tsv_text(write: Callable[[TextIO], None], path: str | Path | None = None) -> str:
    """Run a ``write(stream)`` TSV writer into a string; also save it to ``path`` when given."""
    buf = io.StringIO()
    write(buf)
    text = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    return text


def _type_name(t: int) -> str:
    return PerturbationType(int(t)).name.lower()


class Predictor:
    """Phenotype predictions from a trained model.

    Args:
        model: a :class:`~cellformer.models.base.PhenotypeModel` (put in eval mode here).
        context: its :class:`~cellformer.training.datamodule.DataContext` (genome, graphs, phenotypes).
        device: where the model runs.
        batch_size: queries per model call in :meth:`predict`.
    """

    def __init__(self, model: torch.nn.Module, context: Any, device: str | torch.device = "cpu", batch_size: int = 0):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.context = context
        self.base_genome: Genome = context.genome
        self.graphs = context.graphs
        self.phenotype_names: list[str] = list(context.phenotype_names)
        if int(batch_size) < 0:
            raise UserError(f"batch size must be positive, got {batch_size}")
        self.batch_size = int(batch_size) or DEFAULT_BATCH_SIZE
        self.added: dict[str, str] = {}
        self.genome: Genome = self.base_genome
        self._het_features: np.ndarray | None = None
        self._cache: dict[tuple[str, ...], Any] = {}
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 0) -> Predictor:
        """Load a checkpoint written by ``cellformer fit`` (``torch.load(weights_only=True)``).

        Missing, empty, truncated or foreign files raise :class:`~cellformer.errors.UserError`.
        """
        from cellformer.models.checkpoint import load_checkpoint

        model, context = load_checkpoint(Path(path), map_location="cpu")
        return cls(model, context, device=device, batch_size=batch_size)

    # ------------------------------------------------------------------ facts
    @property
    def num_base_genes(self) -> int:
        """Genes of the checkpoint's genome (added genes are numbered from here)."""
        return len(self.base_genome)

    @property
    def has_encoder_cache(self) -> bool:
        """Whether the model splits encoder and head (``encode_genome`` + ``predict_from_encoding``)."""
        return bool(self.model.splits_encoder)

    def phenotype_index(self, name: str) -> int:
        """Column of a phenotype; unknown names raise :class:`~cellformer.errors.UserError` listing them."""
        if name not in self.phenotype_names:
            raise unknown_name_error("phenotype", name, self.phenotype_names)
        return self.phenotype_names.index(name)

    def fingerprint(self) -> str:
        """A short hash of the model weights, genome and added genes (identifies screen states)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(self.base_genome.hash.encode())
            h.update("\n".join(self.phenotype_names).encode())
            for k, v in sorted(self.model.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # ------------------------------------------------------------------ genome variants
    def add_genes(self, sequences: Mapping[str, str]) -> list[str]:
        """Register heterologous genes (name -> coding DNA); returns their names.

        Sequences are validated (:func:`~cellformer.genome.validate_cds`: errors for non-DNA characters,
        empty sequences or a length that is not a multiple of 3; warnings for a missing start/stop
        codon). The names must be new to the genome. Afterwards queries may include them with type
        ``addition``.
        """
        clean: dict[str, str] = {}
        for name, seq in sequences.items():
            name = str(name).strip()
            if not name or any(c.isspace() or c == ";" for c in name):
                raise UserError(f"invalid added gene name {name!r} (no spaces or ';')")
            if name.upper() in {n.upper() for n in [*self.added, *clean]}:
                raise UserError(f"gene {name!r} was already added")
            if name in self.base_genome:
                raise UserError(
                    f"cannot add gene {name!r}: the genome already has a gene of that name "
                    f"({self.base_genome.display(self.base_genome.lookup(name))})"
                )
            clean[name] = validate_cds(seq, name)
        if not clean:
            return []
        merged = {**self.added, **clean}
        # Genome.add_genes checks the feature width and builds the variant genome (base + all added)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # validate_cds above already warned once
            genome = self.base_genome.add_genes(merged)
        self.added = merged
        self.genome = genome
        self._het_features = genome.features[len(self.base_genome) :]  # the appended genes' sequence features
        return list(clean)

    def add_fasta(self, path: str | Path, names: Sequence[str] | None = None) -> list[str]:
        """Add the genes of a FASTA file (record name = first word of the header)."""
        records = read_fasta(path)
        if names is not None:
            if len(names) != len(records):
                raise SequenceError(f"{path}: {len(records)} records but {len(names)} names given")
            return self.add_genes({n: r.sequence for n, r in zip(names, records, strict=True)})
        return self.add_genes({r.name: r.sequence for r in records})

    def clear_added(self) -> None:
        """Forget all added genes (cached base-genome encodings are kept)."""
        self.added = {}
        self.genome = self.base_genome
        self._het_features = None
        self._cache = {k: v for k, v in self._cache.items() if not k}

    # ------------------------------------------------------------------ resolution
    def resolve(
        self, gene_sets: Sequence[Sequence[str]], types: Sequence[Sequence[str] | str | None] | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Gene indices (added genes as ``N + position``) and type codes of each query.

        ``types`` per query: a list aligned with the genes, one name for all genes, or None (deletion
        for genome genes, addition for added genes). Raises :class:`~cellformer.genome.UnknownGeneError`
        (with close matches) for unknown genes and :class:`~cellformer.errors.UserError` for duplicates,
        empty sets or names (``"A;"``), or types that do not fit the gene (only added genes take
        ``addition``, and they take nothing else).
        """
        if isinstance(gene_sets, str):
            raise TypeError("gene_sets must be a list of gene lists, e.g. [['TFC3', 'YBR123C']]")
        if types is not None and len(types) != len(gene_sets):
            raise UserError(f"{len(types)} type lists for {len(gene_sets)} gene sets")
        n = self.num_base_genes
        idx_out, typ_out = [], []
        for q, genes in enumerate(gene_sets):
            where = f"query {q + 1}"
            if isinstance(genes, str):
                try:
                    genes = split_gene_names(genes)
                except UserError as e:
                    raise UserError(f"{where}: {e}") from None
            genes = [str(g).strip() for g in genes]
            if not genes:
                raise UserError(f"{where}: empty gene set")
            idx = np.array([self.genome.index(g, where) for g in genes], dtype=np.int64)
            uniq, counts = np.unique(idx, return_counts=True)
            if (counts > 1).any():
                dup = int(uniq[counts > 1][0])
                named = [g for g, i in zip(genes, idx.tolist(), strict=True) if i == dup]
                raise UserError(f"{where}: gene {self.genome.genes[dup]} appears more than once ({', '.join(named)})")
            qt = None if types is None else types[q]
            if qt is None:
                codes = [PerturbationType.ADDITION if i >= n else PerturbationType.DELETION for i in idx.tolist()]
            else:
                if isinstance(qt, str):
                    qt = [t for t in qt.split(";") if t.strip()]
                    if len(qt) == 1:
                        qt = qt * len(genes)
                if len(qt) != len(genes):
                    raise UserError(f"{where}: {len(qt)} types for {len(genes)} genes")
                codes = [PerturbationType.parse(t) if isinstance(t, str) else PerturbationType(int(t)) for t in qt]
            self.check_types(idx, codes, where)
            idx_out.append(idx)
            typ_out.append(np.array([int(c) for c in codes], dtype=np.int64))
        return idx_out, typ_out

    def check_types(self, idx: Sequence[int], codes: Sequence[int], where: str = "") -> None:
        """Added genes take type ``addition`` and nothing else; genome genes never take ``addition``."""
        n = self.num_base_genes
        prefix = f"{where}: " if where else ""
        for i, c in zip(list(idx), list(codes), strict=True):
            i, c = int(i), PerturbationType(int(c))
            g = self.genome.genes[i]
            if i >= n and c != PerturbationType.ADDITION:
                raise UserError(f"{prefix}{g} is an added gene; its type must be 'addition', not {c.name.lower()}")
            if i < n and c == PerturbationType.ADDITION:
                raise UserError(
                    f"{prefix}{g} is a genome gene; 'addition' is for added genes "
                    "(add one with --add-gene/--fasta; for more of a native gene use overexpression)"
                )

    def make_batch(self, idx_sets: Sequence[np.ndarray], type_sets: Sequence[np.ndarray]) -> PerturbationBatch:
        """Collate resolved queries into a :class:`PerturbationBatch` (variants grouped per added-gene set)."""
        sizes = np.array([len(s) for s in idx_sets], dtype=np.int64)
        ptr = np.concatenate([[0], np.cumsum(sizes)])
        genes = np.concatenate(idx_sets) if len(idx_sets) else np.zeros(0, np.int64)
        types = np.concatenate(type_sets) if len(type_sets) else np.zeros(0, np.int64)
        y = np.full((len(idx_sets), len(self.phenotype_names)), np.nan, dtype=np.float32)
        rows = np.arange(len(idx_sets), dtype=np.int64)
        return make_batch(rows, genes, types, ptr, y, self.num_base_genes, self._het_features)

    # ------------------------------------------------------------------ model calls
    def _variant_names(self, key: tuple[int, ...]) -> tuple[str, ...]:
        names = list(self.added)
        return tuple(names[h - self.num_base_genes] for h in key)

    def encoding(self, added: Sequence[str] = ()) -> Any:
        """The (cached) encoder output of the base genome plus the named added genes."""
        if not self.has_encoder_cache:
            raise TypeError(f"{type(self.model).__name__} has no encode_genome(); it is run per batch")
        key = tuple(added)
        if key not in self._cache:
            unknown = [a for a in key if a not in self.added]
            if unknown:
                raise KeyError(f"genes {unknown} were not added (added: {list(self.added)})")
            feats = None
            if key:
                names = list(self.added)
                rows = [names.index(a) for a in key]
                feats = torch.from_numpy(self._het_features[rows]).to(self.device)
            with torch.inference_mode():
                self._cache[key] = self.model.encode_genome(feats)
        return self._cache[key]

    @torch.inference_mode()
    def predict_batch(self, batch: PerturbationBatch) -> torch.Tensor:
        """``(B, P)`` float predictions of a batch (on the predictor's device)."""
        batch = batch.to(self.device)
        if not self.has_encoder_cache:
            return self.model(batch).pred.float()
        if len(batch.variants) == 1:
            enc = self.encoding(self._variant_names(batch.variants[0]))
            return self.model.predict_from_encoding(enc, batch.gene_index, batch.types, batch.ptr, batch.batch).float()
        out = torch.empty(batch.num_samples, len(self.phenotype_names), device=self.device)
        ptr = batch.ptr.cpu().numpy()
        variant = batch.variant.cpu().numpy()
        for v, key in enumerate(batch.variants):
            samples = np.flatnonzero(variant == v)
            if not len(samples):
                continue
            sizes = ptr[samples + 1] - ptr[samples]
            take = np.concatenate([np.arange(ptr[s], ptr[s + 1]) for s in samples])
            sub_ptr = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)])).to(self.device)
            sub_batch = torch.repeat_interleave(torch.arange(len(samples), device=self.device), sub_ptr.diff())
            take_t = torch.from_numpy(take).to(self.device)
            enc = self.encoding(self._variant_names(key))
            pred = self.model.predict_from_encoding(
                enc, batch.gene_index[take_t], batch.types[take_t], sub_ptr, sub_batch
            )
            out[torch.from_numpy(samples).to(self.device)] = pred.float()
        return out

    @torch.inference_mode()
    def predict_indices(self, gene_index: torch.Tensor, types: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
        """Fast path for base-genome queries given as CSR tensors (no name resolution): ``(B, P)``."""
        gene_index, types, ptr = (t.to(self.device) for t in (gene_index, types, ptr))
        b = ptr.numel() - 1
        batch_ids = torch.repeat_interleave(torch.arange(b, device=self.device), ptr.diff())
        if self.has_encoder_cache:
            return self.model.predict_from_encoding(self.encoding(()), gene_index, types, ptr, batch_ids).float()
        zero = torch.zeros(b, dtype=torch.long, device=self.device)
        batch = PerturbationBatch(
            gene_index=gene_index,
            types=types,
            ptr=ptr,
            batch=batch_ids,
            y=torch.full((b, len(self.phenotype_names)), float("nan"), device=self.device),
            index=torch.arange(b, device=self.device),
            variant=zero,
        )
        return self.model(batch).pred.float()

    def predict(
        self,
        gene_sets: Sequence[Sequence[str]],
        types: Sequence[Sequence[str] | str | None] | None = None,
        batch_size: int | None = None,
    ) -> PredictionTable:
        """Predict the phenotypes of gene sets, e.g. ``predict([["TFC3", "YBR123C"]])``.

        See :meth:`resolve` for names and types. Returns a :class:`PredictionTable` (``.to_tsv()``).
        """
        idx_sets, type_sets = self.resolve(gene_sets, types)
        return self.predict_resolved(idx_sets, type_sets, batch_size)

    def predict_resolved(
        self, idx_sets: Sequence[np.ndarray], type_sets: Sequence[np.ndarray], batch_size: int | None = None
    ) -> PredictionTable:
        """Predict already resolved queries (indices into :attr:`genome`, type codes), e.g. from
        :func:`cellformer.data.table.read_gene_sets`. Types are checked as in :meth:`resolve`."""
        idx_sets = [np.asarray(i, dtype=np.int64) for i in idx_sets]
        type_sets = [np.asarray(t, dtype=np.int64) for t in type_sets]
        for q, (i, t) in enumerate(zip(idx_sets, type_sets, strict=True)):
            if len(i) != len(t):
                raise UserError(f"query {q + 1}: {len(t)} types for {len(i)} genes")
            if len(i) and (i.min() < 0 or i.max() >= len(self.genome)):
                raise UserError(f"query {q + 1}: gene index out of range [0, {len(self.genome)})")
            self.check_types(i, t, f"query {q + 1}")
        bs = self.batch_size if batch_size is None else int(batch_size)
        if bs <= 0:
            raise UserError(f"batch size must be positive, got {bs}")
        values = np.zeros((len(idx_sets), len(self.phenotype_names)), dtype=np.float32)
        for s in range(0, len(idx_sets), bs):
            batch = self.make_batch(idx_sets[s : s + bs], type_sets[s : s + bs])
            values[s : s + bs] = self.predict_batch(batch).cpu().numpy()
        return PredictionTable(
            genes=[[self.genome.genes[i] for i in idx.tolist()] for idx in idx_sets],
            types=[[_type_name(t) for t in ts.tolist()] for ts in type_sets],
            phenotype_names=list(self.phenotype_names),
            values=values,
        )
