"""Evaluate a model config or a trained model folder on a BEIR split: nDCG@10, Recall@100, MRR@10, MAP@100.

    python evaluate.py model=minilm data=local data.path=/data/scifact data.split=dev
    python evaluate.py model=folder model.name_or_path=logs/train/runs/<run>/model data.split=test
"""

import hydra
from omegaconf import DictConfig

from pa_retriever.tasks.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["ndcg@10"]


if __name__ == "__main__":
    main()
