"""What src/pa_retriever/training/lightning_compat.py relies on in Lightning: fails loudly when a release moves it."""

import inspect

import lightning as L
import torch
from lightning.pytorch.loops import training_epoch_loop
from lightning.pytorch.strategies.launchers import subprocess_script

from pa_retriever.training.lightning_compat import (RESUME_WARNING, SubprocessScriptLauncher, batches_completed,
                                                    child_command, resume_position)


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((batches_completed(self.trainer), resume_position(self.trainer)))
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=2)


def test_fit_loop_counters_say_how_far_a_fit_got():
    module = _Tiny()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    # inside epoch e after b batches: that many completed in all, and a checkpoint now resumes at (e, b)
    assert module.seen == [(0, (0, 0)), (1, (0, 1)), (2, (0, 2)), (3, (1, 0)), (4, (1, 1)), (5, (1, 2))]
    assert batches_completed(trainer) == 6 and resume_position(trainer) == (2, 0)  # finished: the next epoch


def test_ddp_child_commands_are_built_where_they_are_swapped():
    assert list(inspect.signature(subprocess_script._hydra_subprocess_cmd).parameters) == ["local_rank"]
    assert "_hydra_subprocess_cmd" in inspect.getsource(SubprocessScriptLauncher._call_children_scripts)
    with child_command(lambda local_rank: (["job", str(local_rank)], "/here")):
        assert subprocess_script._hydra_subprocess_cmd(1) == (["job", "1"], "/here")
    assert subprocess_script._hydra_subprocess_cmd.__name__ == "_hydra_subprocess_cmd"  # put back


def test_the_silenced_resume_warning_is_lightnings():
    assert RESUME_WARNING in inspect.getsource(training_epoch_loop)
