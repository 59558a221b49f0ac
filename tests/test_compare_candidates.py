"""bench/compare_candidates.py: which queries a miner change gives other negatives, method by method."""

import numpy as np
import pytest

from bench.compare_candidates import compare
from pa_retriever.data.candidates import CandidateArrays
from pa_retriever.mining.methods import MiningMethod


def candidates(neg_scores) -> CandidateArrays:
    neg_scores = np.asarray(neg_scores, np.float32)
    nq, width = neg_scores.shape
    return CandidateArrays([f"q{i}" for i in range(nq)], np.zeros((nq, 1), np.int64), np.full((nq, 1), 0.5, np.float32),
                           np.tile(1 + np.arange(width), (nq, 1)), neg_scores, np.full((nq, 1), -1),
                           np.full((nq, 1), -np.inf, np.float32), 10)


def test_a_score_an_ulp_across_a_bound_changes_only_the_filtered_method():
    old = candidates([[0.5, 0.25, 0.125], [0.375, 0.25, 0.125]])
    new = candidates([[np.nextafter(np.float32(0.5), np.float32(1)), 0.25, 0.125], [0.375, 0.25, 0.125]])
    methods = [MiningMethod("naive", 2), MiningMethod("margin0", 2, filter="marginpos", margin=0.0),
               MiningMethod("none", 0)]
    result = compare(old, new, methods)
    assert result["queries_with_other_negatives"] == {"naive": 0, "margin0": 0}  # above or at the bound: removed
    assert result["largest_candidate_score_difference"] == pytest.approx(2 ** -24)
    old_below = candidates([[np.nextafter(np.float32(0.5), np.float32(0)), 0.25, 0.125], [0.375, 0.25, 0.125]])
    assert compare(old_below, old, methods)["queries_with_other_negatives"] == {"naive": 0, "margin0": 1}


def test_other_data_is_refused():
    with pytest.raises(SystemExit, match="not the same data"):
        compare(candidates([[0.5]]), candidates([[0.5], [0.25]]), [])
