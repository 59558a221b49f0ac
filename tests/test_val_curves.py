"""bench/val_curves.py: per-epoch dev scores of train.py runs become a chart and a JSON record beside it."""

import json
import sys

from bench import val_curves


def test_curves_are_kept_as_json_beside_the_chart(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "csv").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        "mining: {name: naive_topk}\nteacher: {name: minilm}\nseed: 2\ntrainer: {max_epochs: 3}\n")
    # Lightning's CSV logger writes train and val metrics on separate rows; only val rows count
    (run / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/ndcg@10\n0,10,1.5,\n0,19,,0.70\n1,29,,0.75\n")
    out = tmp_path / "curves.png"
    monkeypatch.setattr(sys, "argv", ["val_curves.py", str(run), str(tmp_path / "multirun.yaml"), "--out", str(out)])
    val_curves.main()
    assert out.stat().st_size > 0
    assert json.loads(out.with_suffix(".json").read_text()) == [
        {"run": "naive_topk, teacher minilm, seed 2", "max_epochs": 3, "val_ndcg@10": [0.70, 0.75]}]
