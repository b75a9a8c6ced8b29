"""Where the embedded default (real yeast genome and graphs, simulated screen) lives."""

from __future__ import annotations

import os
from pathlib import Path

#: Repository root (``graphs/``, ``data/``, ``configs/`` sit beside the ``cellformer`` package).
ROOT = Path(os.environ.get("CELLFORMER_HOME", Path(__file__).resolve().parents[1]))
YEAST_DIR = ROOT / "graphs" / "yeast"
DATA_DIR = ROOT / "data"
DEFAULT_DATASET = DATA_DIR / "yeast_sim.h5"

#: The shipped yeast graphs: name -> (file under graphs/yeast, directed).
YEAST_GRAPHS: dict[str, tuple[str, bool]] = {
    "string_neighborhood": ("string_v9_1_neighborhood.tsv.gz", False),
    "string_database": ("string_v9_1_database.tsv.gz", False),
    "string_cooccurence": ("string_v9_1_cooccurence.tsv.gz", False),
    "string_fusion": ("string_v9_1_fusion.tsv.gz", False),
    "ppi_krogan": ("ppi_krogan2006.tsv.gz", False),
    "ppi_physical": ("ppi_physical_kisr.tsv.gz", False),
    "coexpression_hu": ("coexpression_hu2007.tsv.gz", False),
    "gi_costanzo": ("gi_similarity_costanzo2016.tsv.gz", False),
    "regulatory": ("regulatory_tf_target.tsv.gz", True),
}
#: STRING-style channels (DANGO builds one GNN per channel).
STRING_CHANNELS = ["string_neighborhood", "string_database", "string_cooccurence", "string_fusion"]
