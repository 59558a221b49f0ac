"""The false-negative probe: held-out positives and listed false negatives, counted per mining method."""

import numpy as np
import pytest

from src.data.beir import DataFormatError, LoadReport, RetrievalData, read_false_negatives
from src.mining.methods import MiningMethod
from src.mining.probe import false_negative_picks, hold_out_positives, known_false_negatives
from test_mining_methods import candidates


def test_hold_out_removes_one_positive_of_each_multi_positive_query_only():
    data = RetrievalData(["p0", "p1", "p2", "p3"], ["a", "b", "c", "d"], ["q1", "q2"], ["x", "y"],
                         {"q1": {"p0": 1, "p1": 1, "p3": 0}, "q2": {"p2": 1}}, LoadReport("train"))
    held, hidden = hold_out_positives(data, seed=0)
    assert list(hidden) == ["q1"] and hidden["q1"] in {"p0", "p1"}
    assert set(held.positives("q1")) == {"p0", "p1"} - {hidden["q1"]} and held.qrels["q1"]["p3"] == 0
    assert held.qrels["q2"] == {"p2": 1} and data.qrels["q1"] == {"p0": 1, "p1": 1, "p3": 0}  # original intact
    assert hold_out_positives(data, seed=0)[1] == hidden  # seeded


def test_picks_count_the_known_false_negative_per_method():
    # The positive scores 0.5; a false negative at rank 0 (0.625) is above it: naive takes it, PercPos 95% not.
    c = candidates(pos=((0.5,), (0.5,)), scores=([0.625, 0.5, 0.375, 0.25, 0.1875, 0.125, 0.0625],) * 2)
    known = known_false_negatives(c, {"q0": "rank0", "q1": {"rank6"}, "q9": "rank0"},
                                  {f"rank{r}": 10 + r for r in range(7)})
    assert known == {0: {10}, 1: {16}}  # unknown queries are ignored
    naive = false_negative_picks([c], known, MiningMethod("naive", 4))
    assert (naive.queries, naive.in_candidates, naive.picked) == (2, 2, 1)  # rank 6 is stored but not taken
    percpos = false_negative_picks([c], known, MiningMethod("percpos", 4, filter="percpos", perc=0.95))
    assert percpos.picked == 0 and percpos.cell() == "0/2 (0%)"


def test_listed_false_negatives_are_read_and_bad_lines_named(tmp_path):
    assert read_false_negatives(tmp_path) == {}
    (tmp_path / "false_negatives.tsv").write_text("query-id\tcorpus-id\nq1\td1\nq1\td2\n\nq2\td1\n")
    assert read_false_negatives(tmp_path) == {"q1": {"d1", "d2"}, "q2": {"d1"}}
    (tmp_path / "false_negatives.tsv").write_text("q1\td1\nq2\td1\t1\n")
    with pytest.raises(DataFormatError, match=r"false_negatives.tsv:2: expected 2 tab-separated columns"):
        read_false_negatives(tmp_path)
