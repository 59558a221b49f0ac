"""Mining methods pinned against hand-computed cases from the paper's definitions.

Scores are dyadic fractions (exact in float32), so "exactly at the bound" is exact: such a candidate is removed.
"""

import numpy as np
import pytest

from pa_retriever.data.candidates import CandidateArrays
from pa_retriever.mining.methods import MiningMethod, select_negatives

# Candidate scores best first; the positive scores 0.5. Corpus rows of candidates are 10 + rank.
SCORES = [0.625, 0.5, 0.375, 0.25, 0.1875, 0.125, 0.0625, 0.03125]
TAIL = [0.375, 0.015625, 0.0078125]  # a tail passage exactly at the bound (0.375) must never be used


def candidates(pos=((0.5,),), scores=(SCORES,), tail=(TAIL,), n_passages=100) -> CandidateArrays:
    nq = len(scores)
    width = max(len(s) for s in scores)
    neg_idx = np.full((nq, width), -1)
    neg_scores = np.full((nq, width), -np.inf, dtype=np.float32)
    for q, s in enumerate(scores):
        neg_idx[q, : len(s)] = 10 + np.arange(len(s))
        neg_scores[q, : len(s)] = s
    pos_width = max(len(p) for p in pos)
    pos_idx = np.full((nq, pos_width), -1)
    pos_scores = np.full((nq, pos_width), np.nan, dtype=np.float32)
    for q, p in enumerate(pos):
        pos_idx[q, : len(p)] = np.arange(len(p))
        pos_scores[q, : len(p)] = p
    tail_idx = np.tile(80 + np.arange(len(tail[0])), (nq, 1))
    return CandidateArrays([f"q{i}" for i in range(nq)], pos_idx, pos_scores, neg_idx, neg_scores, tail_idx,
                           np.tile(np.asarray(tail[0], np.float32), (nq, 1)), n_passages)


def pick(method: MiningMethod, c=None, seed=0):
    c = c or candidates()
    return select_negatives([c], np.arange(len(c)), method, np.random.default_rng(seed))


def ranks(neg) -> list[int]:
    return [int(i) - 10 if i >= 0 else -1 for i in neg.idx[0]]


def test_naive_topk_takes_the_first_k():
    neg = pick(MiningMethod("naive", 4))
    assert ranks(neg) == [0, 1, 2, 3]
    assert neg.scores[0].tolist() == [0.625, 0.5, 0.375, 0.25]
    assert neg.removed[0] == 0 and neg.filled[0] == 0


def test_shifted_skips_the_first_n():
    neg = pick(MiningMethod("shifted", 3, filter="shifted", shift=2))
    assert ranks(neg) == [2, 3, 4] and neg.removed[0] == 2


@pytest.mark.parametrize("method", [
    MiningMethod("abs", 3, filter="abs", threshold=0.375),
    MiningMethod("marginpos", 3, filter="marginpos", margin=0.125),  # 0.5 - 0.125 = 0.375
    MiningMethod("percpos", 3, filter="percpos", perc=0.75),  # 0.5 * 0.75 = 0.375
])
def test_threshold_filters_remove_candidates_at_or_above_the_bound(method):
    neg = pick(method)
    assert ranks(neg) == [3, 4, 5]  # 0.625, 0.5 and 0.375 (exactly at the bound) are removed
    assert neg.removed[0] == 3


def test_percpos_paper_default_on_a_candidate_above_the_positive():
    neg = pick(MiningMethod("percpos", 2, filter="percpos", perc=0.95))  # bound 0.475
    assert ranks(neg) == [2, 3]


def test_several_positives_anchor_on_the_lowest():
    c = candidates(pos=((0.75, 0.5),))
    assert ranks(pick(MiningMethod("percpos", 1, filter="percpos", perc=0.75), c)) == [3]


def test_fill_uses_tail_passages_that_pass_the_filter_and_counts_the_rest():
    c = candidates(scores=([0.625, 0.5, 0.375, 0.25],))
    neg = pick(MiningMethod("percpos", 4, filter="percpos", perc=0.75), c)
    # one candidate survives (0.25); the tail adds 0.015625 and 0.0078125 but not 0.375 (at the bound)
    assert neg.idx[0].tolist() == [13, 81, 82, -1]
    assert neg.filled[0] == 2
    assert np.isnan(neg.scores[0, 3])


def test_fill_keeps_candidates_first_and_never_repeats():
    c = candidates(scores=([0.25],))
    neg = pick(MiningMethod("naive", 3), c)
    assert neg.idx[0].tolist() == [10, 80, 81] and neg.filled[0] == 2


def test_sampled_topk_follows_softmax_within_the_first_k_survivors():
    method = MiningMethod("sampled", 1, filter="percpos", perc=0.75, select="sampled", sample_k=3, temperature=0.25)
    counts = np.zeros(8, int)
    for seed in range(3000):
        counts[ranks(pick(method, seed=seed))[0]] += 1
    survivors = np.array(SCORES[3:6]) / 0.25  # ranks 3, 4, 5 are the first 3 survivors
    expected = np.exp(survivors) / np.exp(survivors).sum()
    assert counts[[0, 1, 2, 6, 7]].sum() == 0
    np.testing.assert_allclose(counts[3:6] / counts.sum(), expected, atol=0.03)


def test_sampled_draws_without_replacement():
    method = MiningMethod("sampled", 3, select="sampled", sample_k=3)
    for seed in range(50):
        assert sorted(ranks(pick(method, seed=seed))) == [0, 1, 2]


def test_top1_sampled_keeps_the_best_survivor():
    method = MiningMethod("t1", 2, filter="percpos", perc=0.75, select="top1_sampled", sample_k=4)
    seen = set()
    for seed in range(200):
        r = ranks(pick(method, seed=seed))
        assert r[0] == 3 and r[1] in (4, 5, 6)
        seen.add(r[1])
    assert seen == {4, 5, 6}


def test_random_never_returns_a_positive_nor_a_passage_twice():
    c = candidates(pos=((0.5, 0.4, 0.3),), n_passages=5)
    neg = pick(MiningMethod("random", 4, select="random"), c)
    assert sorted(neg.idx[0].tolist()) == [-1, -1, 3, 4] and np.isnan(neg.scores).all()  # only two to give
    everything = pick(MiningMethod("random", 11, select="random"), candidates(n_passages=12), seed=1)
    assert sorted(everything.idx[0].tolist()) == list(range(1, 12))


def test_none_gives_no_hard_negatives():
    assert pick(MiningMethod("none", 0)).idx.shape == (1, 0)


def test_only_methods_that_read_teacher_scores_need_a_teacher():
    assert not MiningMethod("none", 0).uses_teacher and not MiningMethod("random", 4, select="random").uses_teacher
    assert MiningMethod("naive", 4).uses_teacher and MiningMethod("perc", 4, filter="percpos", perc=0.95).uses_teacher


def test_every_query_is_kept_even_with_nothing_to_offer():
    c = candidates(pos=((0.5,), (0.5,)), scores=(SCORES, [0.625]), tail=([0.5],))
    neg = pick(MiningMethod("percpos", 2, filter="percpos", perc=0.75), c)
    assert neg.idx.shape == (2, 2)
    assert neg.idx[1].tolist() == [-1, -1]


def two_teachers():
    a = candidates()
    b = candidates(scores=([0.25, 0.125, 0.0625],))
    b.neg_idx[0, :3] = [13, 50, 51]  # teacher b's best is teacher a's rank 3
    return a, b


def test_cross_sample_uses_one_teacher_per_query():
    a, b = two_teachers()
    method = MiningMethod("cross", 2, ensemble="cross_sample")
    seen = {tuple(select_negatives([a, b], np.array([0]), method, np.random.default_rng(s)).idx[0])
            for s in range(40)}
    assert seen == {(10, 11), (13, 50)}


def test_intra_sample_takes_each_teachers_top1_with_or_without_dedup():
    a, b = two_teachers()
    method = MiningMethod("intra", 2, filter="percpos", perc=0.75, ensemble="intra_sample")
    assert pick_many([a, b], method) == [13, 13]  # both teachers' best survivor is row 13
    dedup = MiningMethod("intra", 2, filter="percpos", perc=0.75, ensemble="intra_sample_dedup")
    assert pick_many([a, b], dedup) == [13, 50]


def test_intra_sample_gives_exactly_num_negatives_when_teachers_do_not_divide_it():
    a, b = two_teachers()
    assert pick_many([a, b], MiningMethod("intra", 3, ensemble="intra_sample")) == [10, 11, 13]  # a: 2, b: 1
    assert pick_many([a, b, a], MiningMethod("intra", 1, ensemble="intra_sample")) == [10]


def test_ensemble_margins_are_taken_within_each_teacher():
    from pa_retriever.mining.stats import method_stats
    a = candidates()  # cosine-like: positive 0.5, best candidate 0.625
    b = candidates(pos=((32.0,),), scores=([24.0, 16.0],))  # BM25-like: positive 32
    b.neg_idx[0, :2] = [50, 51]
    stats = method_stats([a, b], MiningMethod("intra", 2, ensemble="intra_sample"), names=["dense", "bm25"])
    assert stats.margins.tolist() == [0.5 - 0.625, 32.0 - 24.0]
    assert sorted(stats.positive_scores.tolist()) == [0.5, 32.0]
    # Their scales differ: each teacher's scores are shown apart, never averaged together.
    dense, bm25 = stats.per_teacher()
    assert (dense.name, dense.positive_scores.tolist(), dense.negative_scores.tolist()) == ("intra [dense]", [0.5], [0.625])
    assert (bm25.positive_scores.tolist(), bm25.margins.tolist()) == ([32.0], [8.0])
    assert stats.row()["pos mean"] == "0.500 / 32.000"


def test_cross_sample_statistics_count_each_querys_positive_under_its_own_teacher_only():
    from pa_retriever.mining.stats import method_stats
    a, b = two_teachers()
    for seed in range(6):
        stats = method_stats([a, b], MiningMethod("cross", 2, ensemble="cross_sample"), seed=seed)
        assert len(stats.positive_scores) == len(a)  # one anchor per query, not one per teacher


def pick_many(teachers, method):
    return select_negatives(teachers, np.array([0]), method, np.random.default_rng(0)).idx[0].tolist()


def test_method_validation_names_the_missing_parameter():
    with pytest.raises(ValueError, match="mining.filter=percpos needs mining.perc"):
        MiningMethod("x", filter="percpos")
    with pytest.raises(ValueError, match="mining.select='best' is not one of"):
        MiningMethod("x", select="best")
    with pytest.raises(ValueError, match=r"mining.sample_k=3 is out of range: it must be an integer in \[4, inf\)"):
        MiningMethod("x", select="sampled", sample_k=3, num_negatives=4)


@pytest.mark.parametrize("settings, message", [
    ({"filter": "percpos", "perc": 1.5}, r"mining.perc=1.5 is out of range: it must be a number in \(0, 1.05\]"),
    ({"filter": "percpos", "perc": -1}, r"mining.perc=-1 is out of range"),
    ({"filter": "marginpos", "margin": -0.1}, r"mining.margin=-0.1 is out of range: it must be a number in \[0, inf\)"),
    ({"filter": "abs", "threshold": float("nan")}, r"mining.threshold=nan is out of range"),
    ({"filter": "shifted", "shift": 2.5}, r"mining.shift=2.5 is out of range: it must be an integer"),
    ({"num_negatives": 100000}, r"mining.num_negatives=100000 is out of range: it must be an integer in \[0, 256\]"),
    ({"num_negatives": 0, "filter": "percpos", "perc": 0.95}, r"mining.num_negatives=0 trains on in-batch negatives alone"),
    ({"select": "sampled", "temperature": 0}, r"mining.temperature=0 is out of range"),
])
def test_a_setting_that_would_silently_change_the_method_is_refused(settings, message):
    """perc 1.5 keeps everything (naive top-k), perc -1 keeps nothing, 0 negatives is the in-batch baseline."""
    with pytest.raises(ValueError, match=message):
        MiningMethod("topk_percpos", **settings)
    assert MiningMethod("none", num_negatives=0).uses_teacher is False  # the baseline itself stays valid


def test_sampling_with_fewer_candidates_than_negatives():
    c = candidates(scores=([0.25, 0.125],))
    neg = pick(MiningMethod("s", 4, select="sampled", sample_k=10), c)
    assert sorted(neg.idx[0].tolist()) == [10, 11, 80, 81] and neg.filled[0] == 2


def test_percpos_stays_below_a_negative_positive_score():
    c = candidates(pos=((-0.5,),), scores=([-0.25, -0.5, -0.625, -0.75],))
    neg = pick(MiningMethod("percpos", 2, filter="percpos", perc=0.75), c)  # bound -0.5 - 0.125 = -0.625
    assert ranks(neg) == [3, -1]


class SearchRoundsDifferently:
    """A teacher whose search sums in another order than its pair scores, as faiss does against numpy."""

    name = "stub"

    def __init__(self, scores: np.ndarray):
        self.scores = scores.astype(np.float32)

    def top(self, k, rows):
        searched = self.scores[rows] - np.float32(1e-7)  # a copy of a positive lands just below it
        idx = np.argsort(-searched, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(searched, idx, 1), idx

    def pair_scores(self, rows, idx):
        return np.where(idx >= 0, np.take_along_axis(self.scores[rows], np.maximum(idx, 0), 1), np.nan)


def test_a_copy_of_the_positive_is_scored_like_it_and_removed_at_the_bound():
    from pa_retriever.data.beir import LoadReport, RetrievalData
    from pa_retriever.mining.miner import CandidateSettings, score_candidates
    # p1 is a copy of q0's positive p0: the same score, which a filter bound set at the positive must remove.
    scores = np.array([[0.75, 0.75, 0.5, 0.25, 0.125, 0.0625]])
    data = RetrievalData([f"p{i}" for i in range(6)], [""] * 6, ["q0"], [""], {"q0": {"p0": 1}}, LoadReport("t"))
    c = score_candidates(data, SearchRoundsDifferently(scores), CandidateSettings(depth=3, tail=2))
    assert c.neg_idx.tolist() == [[1, 2, 3]] and c.neg_scores.tolist() == [[0.75, 0.5, 0.25]]
    assert c.pos_scores.tolist() == [[0.75]] and c.tail_scores.tolist() == [[0.0625, -np.inf]]
    for method in (MiningMethod("marginpos", 2, filter="marginpos", margin=0.0),
                   MiningMethod("percpos", 2, filter="percpos", perc=1.0)):
        assert 1 not in pick(method, c).idx


@pytest.mark.parametrize("ignore", [True, False])
def test_the_passage_with_the_query_id_is_offered_only_when_asked(ignore):
    from pa_retriever.data.beir import LoadReport, RetrievalData
    from pa_retriever.mining.miner import CandidateSettings, score_candidates
    # Passage "q0" is the query itself in a corpus that holds its queries (ArguAna); elsewhere ids only collide.
    ids = ["p0", "q0", "p2", "p3"]
    data = RetrievalData(ids, [""] * 4, ["q0"], [""], {"q0": {"p0": 1}}, LoadReport("t"))
    scores = np.array([[0.9, 0.8, 0.5, 0.25]])
    c = score_candidates(data, SearchRoundsDifferently(scores), CandidateSettings(depth=3, tail=1,
                                                                              ignore_identical_ids=ignore))
    offered = set(c.neg_idx[0].tolist()) | set(c.tail_idx[0].tolist())
    assert (1 in offered) != ignore and {2, 3} <= offered


def test_queries_of_one_text_are_mined_as_one_with_all_their_positives():
    from pa_retriever.data.beir import LoadReport, RetrievalData
    from pa_retriever.mining.miner import CandidateSettings, score_candidates
    # SciFact's train split has this: claims 89 and 90 read the same; 89 cites p0 and p1, 90 cites p1 only.
    ids = ["p0", "p1", "p2", "p3", "p4"]
    data = RetrievalData(ids, [""] * 5, ["q89", "q90", "q7"], ["same claim", "same claim", "other"],
                         {"q89": {"p0": 1, "p1": 1}, "q90": {"p1": 1}, "q7": {"p4": 1}}, LoadReport("t"))
    scores = np.array([[0.9, 0.8, 0.5, 0.25, 0.1], [0.1, 0.2, 0.3, 0.4, 0.9]])  # one row per query mined
    c = score_candidates(data, SearchRoundsDifferently(scores), CandidateSettings(depth=2, tail=1))
    assert c.query_ids == ["q89", "q7"]  # q90 is q89: its positive p0 can never be its negative
    assert c.pos_idx.tolist() == [[0, 1], [4, -1]] and c.neg_idx[0].tolist() == [2, 3]


def test_cross_sample_keeps_each_querys_teacher_for_the_whole_run():
    from pa_retriever.mining.methods import negatives_for
    a, b = two_teachers()
    method = MiningMethod("cross", 2, ensemble="cross_sample")
    for seed in range(20):  # the paper mines once: a query's teacher must not change with the epoch
        assert len({tuple(negatives_for([a, b], 0, method, seed, epoch)[0]) for epoch in range(8)}) == 1
