"""The embedding cache: rows land where they belong, or the cache says why it cannot be read."""

import numpy as np
import pytest


class _CountingEncoder:
    """Embeds text i as the vector [i, i]: where a row lands is then visible."""

    def encode(self, texts, kind, batch_size, progress=True):
        return np.array([[float(t), float(t)] for t in texts], dtype=np.float32)


def test_embedding_shards_of_another_layout_are_refused_not_misread(tmp_path):
    from pa_retriever.encode.embedding_cache import ShardedEmbeddings
    texts = [str(i) for i in range(7)]
    written = ShardedEmbeddings(tmp_path, 7, shard_size=3)
    written.build(_CountingEncoder(), texts, "passage", progress=False)
    np.testing.assert_array_equal(written.rows(np.array([6, 0, -1]))[:, 0], [6, 0, 0])
    with pytest.raises(ValueError, match="shard-00000.npy: 3 rows where this layout .* expects 5"):
        ShardedEmbeddings(tmp_path, 7, shard_size=5).rows(np.array([4]))


def test_embeddings_that_fp16_cannot_store_are_refused_with_their_rows(tmp_path):
    from pa_retriever.encode.embedding_cache import ShardedEmbeddings
    texts = ["1", "nan", "2", "1e6"]  # NaN, and a value beyond fp16's 65504
    with pytest.raises(ValueError, match=r"passage rows \[1, 3\] \(2 in all\) encode to NaN or overflow fp16"):
        ShardedEmbeddings(tmp_path, 4, shard_size=4).build(_CountingEncoder(), texts, "passage", progress=False)
    assert not list(tmp_path.glob("*.npy"))


def test_a_shard_written_meanwhile_by_another_job_is_not_encoded_again(tmp_path):
    from pa_retriever.encode.embedding_cache import ShardedEmbeddings

    class Sharing(_CountingEncoder):  # another job sharing the cache writes shard 1 while this one encodes shard 0
        calls = []

        def encode(self, texts, kind, batch_size, progress=True):
            self.calls.append(texts)
            if len(self.calls) == 1:
                ShardedEmbeddings(tmp_path, 4, shard_size=2).build(_CountingEncoder(), ["0", "1", "2", "3"], kind,
                                                                   rank=1, world_size=2, progress=False)
            return super().encode(texts, kind, batch_size, progress)

    store = ShardedEmbeddings(tmp_path, 4, shard_size=2)
    store.build(Sharing(), ["0", "1", "2", "3"], "passage", progress=False)
    assert Sharing.calls == [["0", "1"]]
    np.testing.assert_array_equal(store.rows(np.arange(4))[:, 0], [0, 1, 2, 3])


def test_work_finished_between_a_look_and_the_claim_is_not_done_again(tmp_path):
    """Another job may write the shard and release its claim after this job looked and before it claimed."""
    from pa_retriever.utils.io import claim_unfinished
    looks = iter([False, True])  # not finished at the first look, finished once claimed
    assert not claim_unfinished(tmp_path / "shard.claim", lambda: next(looks))
    assert not (tmp_path / "shard.claim").exists()  # the claim is given back
    assert claim_unfinished(tmp_path / "shard.claim", lambda: False)
    assert not claim_unfinished(tmp_path / "shard.claim", lambda: False)  # held by this process now


def test_a_claim_being_written_is_not_taken_for_a_dead_writers(tmp_path):
    """A claim exists empty for a moment between its creation and its writing: another job must not take it over
    then (both would do the work); one left empty for minutes lost its writer and is taken over."""
    import os
    import time

    from pa_retriever.utils.io import UNWRITTEN_CLAIM_SECONDS, try_claim
    claim = tmp_path / "shard.claim"
    claim.touch()
    assert not try_claim(claim) and claim.read_text() == ""
    old = time.time() - UNWRITTEN_CLAIM_SECONDS - 1
    os.utime(claim, (old, old))
    assert try_claim(claim) and claim.read_text().split()[1] == str(os.getpid())


def test_a_dead_claim_judged_by_two_jobs_is_taken_over_by_one(tmp_path, monkeypatch):
    """Two jobs find the same dead claim; the faster removes it and claims. The slower, judging the old claim,
    must leave the new one in place and not claim: else both would do the work."""
    import os
    import socket

    from pa_retriever.utils import io
    claim = tmp_path / "shard.claim"
    claim.write_text(f"{socket.gethostname()} 999999999\n")  # no such process: abandoned
    judge = io._abandoned

    def faster_job_takes_over_meanwhile(path):
        dead = judge(path)
        path.unlink()
        path.write_text(f"{socket.gethostname()} 1\n")  # the faster job's claim (pid 1 is alive)
        return dead

    monkeypatch.setattr(io, "_abandoned", faster_job_takes_over_meanwhile)
    assert not io.try_claim(claim)
    assert claim.read_text().split()[1] == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["shard.claim"]  # nothing left aside
    monkeypatch.setattr(io, "_abandoned", judge)
    claim.write_text(f"{socket.gethostname()} 999999999\n")
    assert io.try_claim(claim) and claim.read_text().split()[1] == str(os.getpid())  # a lone taker still takes over


def test_search_returns_no_row_for_a_nan_query_in_any_shard():
    from pa_retriever.encode.search import exact_search
    queries = np.array([[1, 0], [np.nan, np.nan]], np.float32)
    for backend in ("faiss", "torch"):
        scores, idx = exact_search(queries, [np.eye(2, dtype=np.float16)] * 2, 3, backend)
        assert idx.tolist() == [[0, 2, 1], [-1, -1, -1]] and np.isneginf(scores[1]).all(), backend


def test_teacher_cache_key_holds_the_resolved_precision_not_auto():
    """Machines sharing a cache that differ in bf16 support must not share shards."""
    import torch

    from pa_retriever.encode.encoder import EncodeSettings, resolve_dtype
    from pa_retriever.encode.spec import EncoderSpec
    from pa_retriever.mining.teachers import DenseTeacher

    def key(precision):
        settings = EncodeSettings(precision=precision, device="cpu")
        return DenseTeacher("t", EncoderSpec("some/model"), settings, "/unused", 100).fingerprint()["precision"]

    native = resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert key("auto") == ("bf16" if native else "fp32")
    assert key("fp16") == "fp16"


def test_auto_precision_counts_only_native_bf16_on_the_hardware_that_runs(monkeypatch):
    """Pre-Ampere GPUs only emulate bf16 (slower than fp32); a CPU trainer on a GPU machine asks the CPU."""
    import torch

    from pa_retriever.encode import encoder
    from pa_retriever.training.module import training_precision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(encoder, "cpu_has_native_bf16", lambda: False)
    assert encoder.resolve_dtype("auto", torch.device("cuda")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # native
    assert training_precision("auto", "gpu") == "bf16-mixed"
    assert training_precision("auto", "cpu") == "32-true"


def test_parts_are_not_mined_again_once_another_job_has_joined_them(tmp_path):
    """A job that waited on the last part may wake after another job wrote the candidates file and removed the
    parts: it must see the work done, not every part missing."""
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pa_retriever.data.candidates import CANDIDATES_FILE, MANIFEST_FILE
    from pa_retriever.mining.miner import MinedParts
    pq.write_table(pa.table({"query_id": pa.array([], pa.string())}), tmp_path / CANDIDATES_FILE)
    (tmp_path / MANIFEST_FILE).write_text('{"rows": 0}')
    parts = MinedParts(tmp_path, n_queries=10, query_chunk=5)
    parts.mine(data=None, teacher=SimpleNamespace(name="t"), settings=None, poll_seconds=0)  # None: nothing to mine
    assert not parts.folder.exists()
