"""Evaluate a model config or a trained model folder on a BEIR split: nDCG@10, Recall@100, MRR@10, MAP@100.

    python evaluate.py model=minilm data.path=../shared/data/scifact data.split=dev
"""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.data import load_data  # noqa: E402
from src.encode.encoder import load_encoder  # noqa: E402
from src.eval.retrieval import evaluate_encoder, format_table, write_results  # noqa: E402
from src.utils.runtime import finish_loggers, instantiate_loggers, log_config, task_wrapper  # noqa: E402


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Encode the split's queries and the corpus, search exactly, score with pytrec_eval, write the results."""
    loggers = instantiate_loggers(cfg.get("logger"))
    log_config(loggers, cfg)
    data = load_data(cfg.data, cfg.data.split)
    encoder = load_encoder(cfg.model, cfg.encode)
    result = evaluate_encoder(encoder, data, k=cfg.k, batch_size=cfg.encode.batch_size,
                              backend=cfg.encode.search_backend, progress=cfg.encode.progress,
                              ignore_identical_ids=cfg.ignore_identical_ids)
    out_dir = Path(cfg.paths.output_dir)
    write_results(result, out_dir, per_query=cfg.per_query, run_depth=cfg.run_depth)
    for logger in loggers:
        logger.log_metrics({f"{cfg.data.split}/{name}": value for name, value in result.metrics.items()})
    finish_loggers(loggers)
    title = f"{cfg.model.name} on {Path(cfg.data.path).name}/{cfg.data.split} ({len(result.per_query)} queries)"
    print(format_table(result.metrics, title))
    print(f"Results written to {out_dir}")
    return result.metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["ndcg@10"]


if __name__ == "__main__":
    main()
