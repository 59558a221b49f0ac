"""The datasets a job reads: `data.path` alone, or the blend `data.datasets` lists, each entry's settings falling
back on the top-level ones.

    data.datasets: [{path: /data/nq}, {path: /data/fiqa, weight: 2, instruction: "Given a financial question,
                    retrieve answers", teacher: bm25, mining: naive_topk}, {path: /data/sts.jsonl, teacher: given,
                    mining: naive_topk, in_batch_negatives: false}]

An entry may set: path (required), split (for training: train_split), url, use_title, strict, instruction (the
query prompt's, where the model's prefix has one), weight (its share of the batches), teacher (a conf/teacher name,
or `given` for the data's own negatives), mining (a conf/mining name), in_batch_negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from pa_retriever.data.source import DataSource
from pa_retriever.mining.methods import MiningMethod
from pa_retriever.utils.checks import SettingError, check_known_keys

ENTRY_KEYS = {"path", "split", "train_split", "url", "use_title", "strict", "instruction", "weight", "teacher",
              "mining", "in_batch_negatives"}


@dataclass
class Dataset:
    """One dataset of a job, its settings resolved."""

    name: str
    source: DataSource
    split: str
    model_cfg: DictConfig | None  # the model config with this dataset's instruction (None: a job without a model)
    teacher_cfg: DictConfig | str | None  # a teacher config, or "given" (None: a job that mines nothing)
    method: MiningMethod | None
    weight: float | None = None
    in_batch_negatives: bool | None = None


def datasets(cfg: DictConfig, split_key: str) -> list[Dataset]:
    """The job's datasets, each read at its own split or the top-level `data.<split_key>` (train_split, split)."""
    # a missing path is read as None, so that DataSource says how to give one
    entries = cfg.data.get("datasets") or [{"path": OmegaConf.select(cfg, "data.path", throw_on_missing=False),
                                            "url": cfg.data.get("url")}]
    found, names = [], set()
    for i, entry in enumerate(entries):
        entry = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)
        check_known_keys(f"data.datasets[{i}]", entry, ENTRY_KEYS)
        # use_title and strict fall back on the top level; a url belongs to its own path alone
        source = DataSource.from_config({**{k: cfg.data.get(k) for k in ("use_title", "strict")}, **entry})
        name = source.name if source.name not in names else f"{source.name}-{i}"
        names.add(name)
        split = entry.get("split") or entry.get(split_key) or cfg.data[split_key]
        teacher, mining = entry.get("teacher"), group_config(cfg, "mining", entry.get("mining"))
        if teacher != "given" and (teacher := group_config(cfg, "teacher", teacher)) is not None:
            teacher = with_instruction(teacher, entry.get("instruction"), None)
        found.append(Dataset(
            name, source, split, with_instruction(cfg.get("model"), entry.get("instruction"), f"data.datasets[{i}]"),
            teacher, MiningMethod.from_config(mining) if mining is not None else None, entry.get("weight"),
            entry.get("in_batch_negatives")))
    return found


def with_instruction(model_cfg: DictConfig | None, instruction: str | None, where: str | None) -> DictConfig | None:
    """The model config with another instruction in its prompt (its query prefix reads `${.instruction}`)."""
    if instruction is None or model_cfg is None:
        return model_cfg
    if "instruction" not in model_cfg:
        if where is None:  # a teacher without an instruction simply encodes as it always does
            return model_cfg
        raise SettingError(f"{where}.instruction: model {model_cfg.get('name')} has no instruction in its prompt")
    return OmegaConf.merge(model_cfg, {"instruction": instruction})


def group_config(cfg: DictConfig, group: str, name: str | None) -> DictConfig | None:
    """The job's own `group` config (None where the job has none), or another option of that group composed by
    name (conf/<group>/<name>)."""
    if name is None:
        return cfg.get(group)
    overrides = [f"{group}={name}"]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: compose with its config search path
        return compose(config_name="train", overrides=overrides)[group]
    with initialize_config_dir(str(Path(cfg.paths.root_dir) / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)[group]
