"""The genome: an ordered list of genes with aliases, features and optional coding sequences."""

from __future__ import annotations

import csv
import difflib
import gzip
import hashlib
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cellformer.errors import MAX_ECHO, UserError, shorten
from cellformer.genome.sequence import SEQUENCE_FEATURE_DIM, sequence_features


class UnknownGeneError(UserError, KeyError):
    """A gene name that is neither a gene id nor an alias of the genome.

    A :class:`~cellformer.errors.UserError`; also a ``KeyError`` for callers that look genes up like keys.
    """

    def __init__(self, name: str, suggestions: Sequence[str], context: str = ""):
        self.name = name
        self.suggestions = list(suggestions)
        hint = f"; close matches: {', '.join(self.suggestions)}" if self.suggestions else ""
        where = f"{context}: " if context else ""
        super().__init__(f"{where}unknown gene {shorten(name)!r}{hint}")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


def open_text(path: str | Path, what: str = "file"):
    """Open a text file for reading (``.gz`` decompressed), as an iterator of lines.

    A UTF-8 byte-order mark is dropped. Problems with the file are :class:`~cellformer.errors.UserError`
    naming it: missing, a directory, not UTF-8 text (e.g. a binary file), a truncated or corrupt ``.gz``.
    ``what`` names the file's role in messages (e.g. ``"gene table"``).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file")
    return _TextLines(path, what)


def _undecodable_line(path: Path) -> int | None:
    """The number of the first line of ``path`` (``.gz`` decompressed) that is not UTF-8, if any."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            for n, raw in enumerate(fh, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return n
    except (OSError, EOFError, zlib.error):
        return None
    return None


class _TextLines:
    """Context manager and line iterator over a text file that turns read failures into :class:`UserError`."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        if path.suffix == ".gz":
            self._fh = gzip.open(path, "rt", encoding="utf-8-sig", newline="")
        else:
            self._fh = open(path, encoding="utf-8-sig", newline="")
        self.line = 0

    def __enter__(self) -> _TextLines:
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def close(self) -> None:
        self._fh.close()

    def __iter__(self) -> _TextLines:
        return self

    def __next__(self) -> str:
        try:
            line = next(self._fh)
        except UnicodeDecodeError:
            line = _undecodable_line(self.path) or self.line + 1  # text is decoded ahead, in blocks
            raise UserError(f"{self.what} {self.path}:{line}: not UTF-8 text (is it a binary file?)") from None
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise UserError(f"{self.what} {self.path}: truncated or corrupt gzip file ({exc})") from None
        except OSError as exc:
            raise UserError(f"{self.what} {self.path}: cannot be read ({exc})") from None
        self.line += 1
        if "\x00" in line:
            raise UserError(f"{self.what} {self.path}:{self.line}: contains NUL bytes (is it a binary file?)")
        return line

    def read(self) -> str:
        """The rest of the file as one string."""
        return "".join(self)


class Genome:
    """An ordered list of ``N`` genes.

    Args:
        genes: gene ids in order (systematic names for yeast); unique, case-insensitively.
        aliases: optional standard name per gene ('' for none); resolved case-insensitively.
        features: optional ``(N, F)`` float32 feature matrix; defaults to the sequence features of
            ``sequences`` where given and zeros elsewhere (``F = SEQUENCE_FEATURE_DIM``).
        sequences: optional mapping gene id -> coding sequence.
        added: optional boolean mask of heterologous (added) genes; these have no learned identity
            and no graph edges.
        name: a label (e.g. ``"yeast"``).
    """

    def __init__(
        self,
        genes: Sequence[str],
        aliases: Sequence[str] | None = None,
        features: np.ndarray | None = None,
        sequences: Mapping[str, str] | None = None,
        added: Sequence[bool] | np.ndarray | None = None,
        name: str = "genome",
    ):
        self.genes: list[str] = [str(g) for g in genes]
        n = len(self.genes)
        self.aliases: list[str] = [str(a) for a in aliases] if aliases is not None else [""] * n
        if len(self.aliases) != n:
            raise ValueError(f"{len(self.aliases)} aliases for {n} genes")
        self.sequences: dict[str, str] = dict(sequences or {})
        self.added = np.zeros(n, dtype=bool) if added is None else np.asarray(added, dtype=bool).copy()
        if self.added.shape != (n,):
            raise ValueError(f"added mask has shape {self.added.shape}, expected ({n},)")
        self.name = name
        self._index: dict[str, int] = {}
        for i, g in enumerate(self.genes):
            key = g.upper()
            if key in self._index:
                raise ValueError(f"gene id {g!r} appears twice (positions {self._index[key]} and {i})")
            self._index[key] = i
        self._alias_index: dict[str, int] = {}
        for i, a in enumerate(self.aliases):
            key = a.upper()
            if key and key not in self._index:
                # an alias that is also some gene's id never shadows that id
                self._alias_index.setdefault(key, i)
        unknown_seq = [g for g in self.sequences if g.upper() not in self._index]
        if unknown_seq:
            raise UnknownGeneError(unknown_seq[0], self.close_matches(unknown_seq[0]), "sequences")
        if features is None:
            features = np.zeros((n, SEQUENCE_FEATURE_DIM), dtype=np.float32)
            for g, s in self.sequences.items():
                features[self._index[g.upper()]] = sequence_features(s, g)
        self.features = np.ascontiguousarray(features, dtype=np.float32)
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(f"features have shape {self.features.shape}, expected ({n}, F)")
        self._hash: str | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tsv(cls, path: str | Path, name: str | None = None) -> Genome:
        """Read a gene table with columns ``systematic_name`` and optional ``standard_name``."""
        path = Path(path)
        with open_text(path, "gene table") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            if reader.fieldnames is None or "systematic_name" not in [f.strip() for f in reader.fieldnames]:
                raise UserError(f"gene table {path}: expected a header with a 'systematic_name' column")
            reader.fieldnames = [f.strip() for f in reader.fieldnames]
            genes, aliases = [], []
            for row in reader:
                genes.append((row["systematic_name"] or "").strip())
                aliases.append((row.get("standard_name") or "").strip())
        try:
            return cls(genes, aliases, name=name or path.name.split(".")[0])
        except ValueError as exc:
            raise UserError(f"gene table {path}: {exc}") from None

    def add_genes(self, sequences: Mapping[str, str]) -> Genome:
        """A new genome variant with heterologous genes appended (features from their CDS)."""
        for g in sequences:
            if g.upper() in self._index or g.upper() in self._alias_index:
                raise UserError(f"cannot add gene {g!r}: the genome already has a gene of that name")
        new_feats = np.stack([sequence_features(s, g) for g, s in sequences.items()]) if sequences else None
        if new_feats is not None and new_feats.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"added genes have {new_feats.shape[1]} sequence features but this genome's features "
                f"have {self.features.shape[1]} columns"
            )
        feats = self.features if new_feats is None else np.concatenate([self.features, new_feats])
        return Genome(
            self.genes + list(sequences),
            self.aliases + [""] * len(sequences),
            features=feats,
            sequences={**self.sequences, **sequences},
            added=np.concatenate([self.added, np.ones(len(sequences), dtype=bool)]),
            name=self.name,
        )

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return len(self.genes)

    @property
    def num_genes(self) -> int:
        return len(self.genes)

    @property
    def num_known(self) -> int:
        """Number of native (non-added) genes."""
        return int((~self.added).sum())

    def __contains__(self, name: str) -> bool:
        key = str(name).strip().upper()
        return key in self._index or key in self._alias_index

    def close_matches(self, name: str, n: int = 5) -> list[str]:
        """Gene ids or aliases that look like ``name`` (for error messages)."""
        key = str(name).strip().upper()
        if len(key) > 4 * MAX_ECHO:  # no gene name is that long: nothing is close (and matching would be slow)
            return []
        pool = list(self._index) + list(self._alias_index)
        matches = difflib.get_close_matches(key, pool, n=n, cutoff=0.6)
        return [self.display(self.lookup(m)) for m in matches]

    @property
    def exact_names(self) -> dict[str, int]:
        """Gene ids and aliases as written and upper-cased -> index: a fast first lookup for bulk imports
        (a name missing here goes through :meth:`lookup`)."""
        if getattr(self, "_exact", None) is None:
            exact = {}
            for key, i in self._alias_index.items():
                exact[key] = i
                exact[self.aliases[i]] = i
            for key, i in self._index.items():
                exact[key] = i
                exact[self.genes[i]] = i
            self._exact = exact
        return self._exact

    def lookup(self, name: str) -> int:
        """Index of a gene id or alias (case-insensitive), or -1."""
        key = str(name).strip().upper()
        i = self._index.get(key)
        if i is None:
            i = self._alias_index.get(key, -1)
        return i

    def index(self, name: str, context: str = "") -> int:
        """Index of a gene id or alias; raises :class:`UnknownGeneError` listing close matches."""
        i = self.lookup(name)
        if i < 0:
            raise UnknownGeneError(str(name), self.close_matches(name), context)
        return i

    def indices(self, names: Iterable[str], context: str = "") -> list[int]:
        """Indices of several genes (see :meth:`index`)."""
        return [self.index(n, context) for n in names]

    def display(self, i: int) -> str:
        """``ID`` or ``ID (ALIAS)`` for messages and tables."""
        a = self.aliases[i]
        return f"{self.genes[i]} ({a})" if a else self.genes[i]

    # ------------------------------------------------------------------ identity
    @property
    def hash(self) -> str:
        """Stable content hash (sha256 hex, 16 chars) of gene ids, added mask and features."""
        if self._hash is None:
            h = hashlib.sha256()
            h.update("\n".join(self.genes).encode())
            h.update(self.added.tobytes())
            h.update(np.ascontiguousarray(self.features, dtype="<f4").tobytes())
            self._hash = h.hexdigest()[:16]
        return self._hash

    def __repr__(self) -> str:
        extra = f", added={int(self.added.sum())}" if self.added.any() else ""
        return f"Genome({self.name!r}, N={len(self)}{extra}, features={self.features.shape[1]}, hash={self.hash})"
