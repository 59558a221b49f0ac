"""pa-retriever: bi-encoder retrievers trained with positive-aware hard-negative mining (NV-Retriever).

Layers, each importing only those below it: utils < data < encode < eval < mining < training < tasks.
Importing the package registers the `project_root` resolver that conf/paths reads.
"""

from pathlib import Path

from omegaconf import OmegaConf


def project_root() -> str:
    """The checkout this package runs from (the folder holding conf/train.yaml), else the working directory."""
    checkout = Path(__file__).resolve().parents[2]
    return str(checkout if (checkout / "conf" / "train.yaml").is_file() else Path.cwd())


OmegaConf.register_new_resolver("project_root", project_root, replace=True)
