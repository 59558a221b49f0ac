"""Train a bi-encoder with positive-aware hard-negative mining; export it; evaluate it.

    python train.py                                                  # the quickstart on the bundled demo data
    python train.py data=local data.path=/data/fiqa model=e5 teacher=e5_mistral mining=topk_percpos trainer=gpu
    python train.py -m mining=naive_topk,topk_shifted,topk_abs,topk_marginpos,topk_percpos
    python train.py -m hparams_search=scifact_optuna experiment=scifact/ablation_cpu data.path=/data/scifact
"""

import hydra
from omegaconf import DictConfig

from pa_retriever.tasks.train import optimized_value, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return optimized_value(train(cfg), cfg.get("optimized_metric"))  # what a sweeper optimises


if __name__ == "__main__":
    main()
