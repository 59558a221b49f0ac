"""Every config file composes, and builds what it names."""

from pathlib import Path

import pytest
from helpers import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.mining.methods import MiningMethod
from pa_retriever.mining.teachers import build_teachers

CONF = ROOT / "conf"


def names(group: str) -> list[str]:
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml"))


@pytest.mark.parametrize("experiment", names("experiment"))
def test_experiments_compose(experiment):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    MiningMethod.from_config(cfg.mining)
    assert cfg.model.name_or_path and cfg.teacher.name


@pytest.mark.parametrize("method", names("mining"))
def test_mining_configs_build_methods(method):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("mine", overrides=[f"mining={method}"])
    assert MiningMethod.from_config(cfg.mining).name == Path(method).name


@pytest.mark.parametrize("teacher", names("teacher"))
def test_teacher_configs_build_teachers(teacher, tmp_path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        # a trained folder (round two's is made by round one, a cross-encoder's by you) is named by a stand-in id
        cfg = compose("mine", overrides=[f"teacher={teacher}", "teacher.name_or_path=x"]
                      if teacher in ("folder", "round2", "cross_encoder") else [f"teacher={teacher}"])
    teachers = build_teachers(cfg.teacher, EncodeSettings.from_config(cfg.encode), tmp_path, 1000)
    assert len(teachers) == (2 if teacher == "small_ensemble" else 4 if teacher == "paper_ensemble" else 1)


def test_evaluate_encodes_in_fp32_unless_told_otherwise():
    """Published scores are fp32: evaluate.yaml's own setting must win over encode/default's `auto`."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        assert compose("evaluate").encode.precision == "fp32"
        assert compose("evaluate", overrides=["encode.precision=auto"]).encode.precision == "auto"
        assert compose("train").encode.precision == "auto"


RECIPE_GROUPS = ("module", "datamodule", "trainer")


def test_a_run_that_names_its_data_trains_with_the_documented_defaults():
    """Naming data= and model= must not inherit the demo's quickstart settings: the recipe is conf/module,
    conf/datamodule and conf/trainer's defaults, as written there."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["data=local", "data.path=/x", "model=e5", "mining=topk_percpos"])
    for group in RECIPE_GROUPS:
        documented = OmegaConf.to_container(OmegaConf.load(CONF / group / "default.yaml"))
        assert OmegaConf.to_container(cfg[group]) == documented, group


def test_the_bare_command_runs_the_demo_quickstart():
    """`python train.py`: the demo data with the settings it comes with (conf/recipe/demo.yaml)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train")
    recipe = OmegaConf.load(CONF / "recipe" / "demo.yaml")
    assert cfg.data.path.endswith("data/demo") and cfg.model.name == "minilm" and cfg.mining.name == "topk_percpos"
    assert cfg.datamodule.batch_size == recipe.datamodule.batch_size == 16
    assert cfg.module.optimizer.lr == recipe.module.optimizer.lr


def test_no_config_points_outside_the_checkout():
    """Data paths are arguments: nothing defaults to a folder beside the repository."""
    for path in CONF.rglob("*.yaml"):
        assert "../" not in path.read_text(), path


LAYERS = ("utils", "data", "encode", "eval", "mining", "training", "tasks")


def test_no_module_imports_from_a_layer_above_it():
    """Data flows one way: utils < data < encode < eval < mining < training < tasks."""
    import ast
    package = ROOT / "src" / "pa_retriever"
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).parts
        if len(parts) == 1:
            continue
        layer = LAYERS.index(parts[0])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pa_retriever."):
                imported = node.module.split(".")[1]
                assert LAYERS.index(imported) <= layer, f"{path.relative_to(ROOT)} imports {node.module}"


def test_the_fsdp_trainer_shards_each_transformer_layer():
    import hydra
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

    from pa_retriever.training.ddp import HydraFSDPStrategy
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=fsdp"])
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, HydraFSDPStrategy)
    assert MistralDecoderLayer in strategy.kwargs["auto_wrap_policy"]._module_classes
    assert MistralDecoderLayer in strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes
