"""Every config file composes, and builds what it names."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from helpers import ROOT
from src.mining.methods import MiningMethod
from src.mining.teachers import build_teachers

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
        cfg = compose("mine", overrides=[f"+mining={method}"])
    assert MiningMethod.from_config(cfg.mining).name == Path(method).name


@pytest.mark.parametrize("teacher", names("teacher"))
def test_teacher_configs_build_teachers(teacher, tmp_path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("mine", overrides=[f"teacher={teacher}", "teacher.name_or_path=x"] if teacher == "folder"
                      else [f"teacher={teacher}"])
    teachers = build_teachers(cfg.teacher, cfg.encode, tmp_path, 1000)
    assert len(teachers) == (2 if teacher == "small_ensemble" else 4 if teacher == "paper_ensemble" else 1)


def test_evaluate_encodes_in_fp32_unless_told_otherwise():
    """Published scores are fp32: evaluate.yaml's own setting must win over encode/default's `auto`."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        assert compose("evaluate").encode.precision == "fp32"
        assert compose("evaluate", overrides=["encode.precision=auto"]).encode.precision == "auto"
        assert compose("train").encode.precision == "auto"
