"""The embedding cache: rows land where they belong, or the cache says why it cannot be read."""

import numpy as np
import pytest


class _CountingEncoder:
    """Embeds text i as the vector [i, i]: where a row lands is then visible."""

    def encode(self, texts, kind, batch_size, progress=True):
        return np.array([[float(t), float(t)] for t in texts], dtype=np.float32)


def test_embedding_shards_of_another_layout_are_refused_not_misread(tmp_path):
    from src.encode.embedding_cache import ShardedEmbeddings
    texts = [str(i) for i in range(7)]
    written = ShardedEmbeddings(tmp_path, 7, shard_size=3)
    written.build(_CountingEncoder(), texts, "passage", progress=False)
    np.testing.assert_array_equal(written.rows(np.array([6, 0, -1]))[:, 0], [6, 0, 0])
    with pytest.raises(ValueError, match="shard-00000.npy: 3 rows where this layout .* expects 5"):
        ShardedEmbeddings(tmp_path, 7, shard_size=5).rows(np.array([4]))


def test_teacher_cache_key_holds_the_resolved_precision_not_auto():
    """Machines sharing a cache that differ in bf16 support must not share shards."""
    import torch
    from omegaconf import OmegaConf

    from src.encode.encoder import resolve_dtype
    from src.mining.teachers import DenseTeacher

    def key(precision):
        encode = OmegaConf.create({"precision": precision, "device": "cpu"})
        return DenseTeacher("t", {"name_or_path": "some/model"}, encode, "/unused", 100).fingerprint()["precision"]

    native = resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert key("auto") == ("bf16" if native else "fp32")
    assert key("fp16") == "fp16"
