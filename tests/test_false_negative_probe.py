"""The false-negative probe: held-out positives and listed false negatives, counted per mining method."""

import pytest
from test_mining_methods import SCORES, candidates

from pa_retriever.data.beir import DataFormatError, read_false_negatives
from pa_retriever.mining.methods import MiningMethod
from pa_retriever.mining.probe import (false_negative_picks, false_negative_report, hold_out_positives,
                                       listed_false_negatives)

NAIVE, PERCPOS = MiningMethod("naive", 4), MiningMethod("percpos", 4, filter="percpos", perc=0.95)


def test_a_held_out_positive_joins_the_candidates_at_its_score():
    # Query 0 has positives (corpus rows 0, 1) scoring 0.5 and 0.4375 (exact in float32); query 1 has one.
    c = candidates(pos=((0.5, 0.4375), (0.5,)), scores=(SCORES, SCORES))
    (held,), known = hold_out_positives([c], seed=0)
    assert list(known) == [0] and known[0] <= {0, 1}
    hidden = known[0].pop()
    kept_score = {0: 0.4375, 1: 0.5}[hidden]
    assert held.pos_min[0] == kept_score and held.pos_min[1] == 0.5  # the anchor moves to the kept positive
    row = held.neg_scores[0].tolist()
    assert row == sorted(row, reverse=True) and len(row) == len(SCORES)  # still best first, still K long
    at = held.neg_idx[0].tolist().index(hidden)
    assert row[at] == {0: 0.5, 1: 0.4375}[hidden] and row[at - 1] >= row[at]  # its place: after equal scores
    assert (held.neg_idx[1] == c.neg_idx[1]).all() and (c.pos_idx[0] >= 0).all()  # others and the input untouched
    assert hold_out_positives([c], seed=0)[1] == {0: {hidden}}  # seeded


def test_picks_count_the_known_false_negative_per_method():
    # The positive scores 0.5: a false negative at rank 0 (0.625) is above it, naive takes it, PercPos 95% not.
    c = candidates(pos=((0.5,), (0.5,)), scores=(SCORES, SCORES))
    known = listed_false_negatives(c, {"q0": {"r0"}, "q1": {"r6", "unknown"}, "q9": {"r0"}},
                                   {f"r{r}": 10 + r for r in range(8)})
    assert known == {0: {10}, 1: {16}}  # unknown queries and passages are ignored
    naive = false_negative_picks([c], known, NAIVE)
    assert (naive.queries, naive.stored, naive.picked) == (2, 2, 1)  # rank 6 is stored, not taken
    percpos = false_negative_picks([c], known, PERCPOS)
    assert percpos.picked == 0 and percpos.cell() == "0/2 (0%)"


def test_report_has_a_source_only_where_the_data_has_known_false_negatives():
    single = candidates(pos=((0.5,),))
    assert false_negative_report([single], [NAIVE], {}, {}) == {}
    double = candidates(pos=((0.5, 0.75),))  # the held-out 0.75 outranks every candidate: naive takes it
    report = false_negative_report([double, double], [NAIVE], {}, {})  # an ensemble holds out one passage
    assert list(report) == ["held-out positives"] and report["held-out positives"][0].queries == 1


def test_listed_false_negatives_are_read_and_bad_lines_named(tmp_path):
    assert read_false_negatives(tmp_path) == {}
    (tmp_path / "false_negatives.tsv").write_text("query-id\tcorpus-id\nq1\td1\nq1\td2\n\nq2\td1\n")
    assert read_false_negatives(tmp_path) == {"q1": {"d1", "d2"}, "q2": {"d1"}}
    (tmp_path / "false_negatives.tsv").write_text("q1\td1\nq2\td1\t1\n")
    with pytest.raises(DataFormatError, match=r"false_negatives.tsv:2: expected 2 tab-separated columns"):
        read_false_negatives(tmp_path)
