"""Importers for public yeast data: gene networks (STRING, BioGRID, edge lists) and screens
(Costanzo 2016, Kuzmin 2018/2020), plus a resumable, checksum-verified downloader."""

from cellformer.data.importers.fetch import ChecksumError, ManifestEntry, fetch, load_manifest, sha256_file
from cellformer.data.importers.graphs import (
    STRING_CHANNELS,
    GraphImportReport,
    read_biogrid_tab3,
    read_edge_list,
    read_string_detailed,
    read_tf_targets,
)
from cellformer.data.importers.screens import (
    COSTANZO_PHENOTYPES,
    KUZMIN_PHENOTYPES,
    SCREEN_READERS,
    ImportFormatError,
    ImportReport,
    parse_strain_id,
    read_costanzo2016,
    read_kuzmin2018,
    read_kuzmin2020,
    significance_call,
    trigenic_significance_call,
)

__all__ = [
    "ChecksumError",
    "ManifestEntry",
    "fetch",
    "load_manifest",
    "sha256_file",
    "STRING_CHANNELS",
    "GraphImportReport",
    "read_biogrid_tab3",
    "read_edge_list",
    "read_string_detailed",
    "read_tf_targets",
    "COSTANZO_PHENOTYPES",
    "KUZMIN_PHENOTYPES",
    "SCREEN_READERS",
    "ImportFormatError",
    "ImportReport",
    "parse_strain_id",
    "read_costanzo2016",
    "read_kuzmin2018",
    "read_kuzmin2020",
    "significance_call",
    "trigenic_significance_call",
]
