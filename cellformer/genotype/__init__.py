"""Genotype → phenotype mode: segregant datasets (:mod:`.data`), the QTL/epistasis simulator
(:mod:`.simulate`), importers for genotype tables and the ``geno_/pheno_{split}.npy`` layout
(:mod:`.importers`), the models (:mod:`.models`, gradient boosting in :mod:`.gbm`), linkage-block tokens
(:mod:`.blocks`), training (:mod:`.training`) and attribution (:mod:`.explain`)."""

from cellformer.genotype.data import FORMAT, VERSION, GenotypeData, Loci, random_genotype_split

__all__ = ["FORMAT", "VERSION", "GenotypeData", "Loci", "random_genotype_split"]
