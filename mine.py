"""Mine: store the teacher's scores for every training query, then compare the mining methods on them.

    python mine.py data=local data.path=/data/scifact teacher=minilm
    torchrun --nproc_per_node 8 mine.py teacher=e5_mistral hydra.run.dir=logs/mine/e5_mistral
"""

import hydra
from omegaconf import DictConfig

from pa_retriever.tasks.mine import mine


@hydra.main(version_base="1.3", config_path="conf", config_name="mine")
def main(cfg: DictConfig) -> None:
    mine(cfg)


if __name__ == "__main__":
    main()
