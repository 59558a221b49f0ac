"""Callbacks: the mining statistics of the chosen method, and training throughput."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from pa_retriever.mining.stats import format_table, method_stats, plot_margins, plot_score_distributions
from pa_retriever.training.datamodule import TrainingPart
from pa_retriever.utils.io import write_json_atomic
from pa_retriever.utils.plots import log_figures


class MiningStatsCallback(L.Callback):
    """At the start of fitting: what each dataset's mining method makes of its stored candidates, as numbers and
    plots (the candidates come from the source the DataModule mined them with, read once). One dataset writes
    mining_stats.json and logs mining/<statistic>; a blend nests both by dataset."""

    def __init__(self, output_dir: str, parts: list[TrainingPart], seed: int = 0):
        self.output_dir, self.parts, self.seed = Path(output_dir), parts, seed

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        report, figures = {}, {}
        for part in self.parts:
            candidates = part.source.load(part.train)
            stats = method_stats(list(candidates.values()), part.method, seed=self.seed, names=list(candidates))
            label = "" if len(self.parts) == 1 else f"{part.name}/"
            print(f"{part.name}:\n{format_table([stats.row()])}")
            metrics = {f"mining/{label}{key}": value for key, value in (
                ("removed_share", stats.removed_share), ("negatives_per_query", stats.negatives_per_query),
                ("queries_filled", stats.queries_filled), ("queries_short", stats.queries_short),
                ("queries", stats.queries))}
            report[part.name] = {**metrics, "table": stats.row()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=0)
            if part.method.uses_teacher:  # else there are no teacher scores to plot
                name = "" if len(self.parts) == 1 else f"_{part.name}"
                figures[f"mining/{label}scores"] = plot_score_distributions(
                    [stats], self.output_dir / f"mining_scores{name}.png")
                figures[f"mining/{label}margins"] = plot_margins([stats], self.output_dir / f"mining_margins{name}.png")
        write_json_atomic(self.output_dir / "mining_stats.json",
                          next(iter(report.values())) if len(self.parts) == 1 else report)
        log_figures(trainer.loggers, figures)


class SampleRate(L.Callback):
    """Logs training samples (queries with their passage groups) per second, past the first steps."""

    def __init__(self, skip_steps: int = 3):
        self.skip_steps = skip_steps
        self.on_train_epoch_start()  # an epoch resumed mid-way gets no epoch-start call

    def on_train_epoch_start(self, *_) -> None:
        self.steps, self.samples, self.started = 0, 0, None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch: dict,
                           batch_idx: int) -> None:
        self.steps += 1
        if self.steps == self.skip_steps:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.started = time.perf_counter()
        elif self.started is not None:
            self.samples += batch["passage_idx"].shape[0] * trainer.world_size
            if self.steps % trainer.log_every_n_steps == 0:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                rate = self.samples / (time.perf_counter() - self.started)
                module.log("train/samples_per_sec", rate, rank_zero_only=True)
