"""Genotype → phenotype mode: segregant datasets (:mod:`.data`), the QTL/epistasis simulator
(:mod:`.simulate`) and importers for genotype tables and the ``geno_/pheno_{split}.npy`` layout
(:mod:`.importers`)."""

from cellformer.genotype.data import FORMAT, VERSION, GenotypeData, Loci, random_genotype_split

__all__ = ["FORMAT", "VERSION", "GenotypeData", "Loci", "random_genotype_split"]
