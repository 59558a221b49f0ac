"""The evaluation job: a model (a config or a trained folder) on one split, or on every dataset `data.datasets`
lists (a row each and their average, as BEIR and MTEB report), scored as train.py scores it."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.encode.spec import EncoderSpec, local_path, resolve_model_path
from pa_retriever.encode.st_folder import trained_lengths
from pa_retriever.encode.towers import Towers
from pa_retriever.eval.metrics import MEASURES
from pa_retriever.eval.retrieval import format_table, score_model, write_results
from pa_retriever.tasks.datasets import datasets
from pa_retriever.tasks.runtime import finish_loggers, instantiate_loggers, log_config, task_wrapper
from pa_retriever.utils.checks import check_number
from pa_retriever.utils.io import write_json_atomic
from pa_retriever.utils.plots import pyplot, save_figure

log = logging.getLogger(__name__)


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """nDCG@10, Recall@100, MRR@10 and MAP@100 of the model, written to the run dir: for several datasets, each in
    its own folder and their average in metrics.json; the average is returned."""
    check_number("k", cfg.k, 1, integer=True, why="the ranking depth scored")
    check_number("run_depth", cfg.run_depth, 0, integer=True, why="passages per query written to run.trec")
    loggers = instantiate_loggers(cfg.get("logger"))
    log_config(loggers, cfg)
    settings = EncodeSettings.from_config(cfg.encode)
    spec = EncoderSpec.from_config(cfg.model)
    _warn_if_longer_than_trained(spec)
    jobs = datasets(cfg, "split")
    for dataset in jobs:  # before the model loads or any set is encoded: a typo in the last set fails at once
        dataset.source.check_scorable(dataset.split)
    towers = Towers.load(spec, settings)
    out_dir = Path(cfg.paths.output_dir)
    scores = {}
    for dataset in jobs:
        split = dataset.source.load(dataset.split)
        result = score_model(towers.prompted(EncoderSpec.from_config(dataset.model_cfg)), split, settings, k=cfg.k,
                             ignore_identical_ids=cfg.ignore_identical_ids)
        write_results(result, out_dir if len(jobs) == 1 else out_dir / dataset.name, per_query=cfg.per_query,
                      run_depth=cfg.run_depth)
        scores[dataset.name] = result.metrics
        for logger in loggers:
            logger.log_metrics({f"{dataset.name}/{dataset.split}/{name}": value
                                for name, value in result.metrics.items()})
        print(format_table(result.metrics, f"{cfg.model.name} on {dataset.name}/{dataset.split} "
                                           f"({len(result.per_query)} queries)"))
    if len(jobs) == 1:
        metrics = scores[jobs[0].name]
    else:
        metrics = {name: sum(s[name] for s in scores.values()) / len(scores) for name in MEASURES}
        write_json_atomic(out_dir / "metrics.json", {**scores, "average": metrics})
        print(summary_table(scores, metrics))
        save_figure(bar_chart(scores, cfg.model.name), out_dir / "ndcg_by_dataset.png")
    finish_loggers(loggers)
    print(f"Results written to {out_dir}")
    return metrics


def _warn_if_longer_than_trained(spec: EncoderSpec) -> None:
    """A model trained at 128 tokens scores lower encoded at 512: say so, since nothing else would."""
    trained = trained_lengths(local_path(resolve_model_path(spec.name_or_path)))
    for kind, length in trained.items():
        if spec.max_length(kind) > length:
            log.warning("%s was trained with %ss cut at %d tokens and is asked to encode them at %d: it may score "
                        "lower than it was measured at (model.%s_max_length=%d encodes as trained)", spec.name_or_path,
                        kind, length, spec.max_length(kind), kind, length)


def summary_table(scores: dict[str, dict[str, float]], average: dict[str, float]) -> str:
    rows = [("dataset", *MEASURES)] + [(name, *(f"{s[m]:.4f}" for m in MEASURES)) for name, s in scores.items()]
    rows.append(("average", *(f"{average[m]:.4f}" for m in MEASURES)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def bar_chart(scores: dict[str, dict[str, float]], model: str):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(scores) + 2), 3.2))
    names = list(scores)
    ax.bar(names, [scores[n]["ndcg@10"] for n in names], color="#4c72b0")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"{model}: nDCG@10 by dataset")
    ax.set_ylim(0, 1)
    for i, name in enumerate(names):
        ax.text(i, scores[name]["ndcg@10"] + 0.01, f"{scores[name]['ndcg@10']:.3f}", ha="center", fontsize=8)
    return fig
