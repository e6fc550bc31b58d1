"""FAISS HNSW / IVF against exact search on a synthetic index (clustered random vectors)."""

from __future__ import annotations

import pytest

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def synthetic(tiny_model_dir, tmp_path_factory):
    import torch

    from bertcli.retrieval.index import write_index

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(40, 32, generator=g)
    vectors = torch.nn.functional.normalize(centers[torch.randint(0, 40, (3000,), generator=g)]
                                            + 0.5 * torch.randn(3000, 32, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(vectors[::60] + 0.3 * torch.randn(50, 32, generator=g), dim=-1)
    idx = write_index(tmp_path_factory.mktemp("syn") / "idx", vectors, [{"_id": f"v{i}"} for i in range(3000)],
                      tiny_model_dir, shard_size=700)
    return idx, vectors, queries


def test_write_index_round_trip(synthetic):
    import torch

    from bertcli.retrieval.index import open_index

    idx, vectors, _ = synthetic
    again = open_index(idx.path)
    assert [s["count"] for s in again.manifest["shards"]] == [700] * 4 + [200]
    assert torch.equal(again.vectors(), vectors) and again.ids[:2] == ["v0", "v1"]


def test_hnsw_recall_and_cache(synthetic, monkeypatch):
    import faiss

    from bertcli.retrieval.ann import ann_recall, ann_search
    from bertcli.retrieval.search import search_vectors

    idx, _, queries = synthetic
    assert ann_recall(idx, queries, "hnsw") >= 0.95
    cached = list(idx.path.glob("ann-hnsw-*.faiss"))
    assert len(cached) == 1
    monkeypatch.setattr(faiss, "IndexHNSWFlat", None)  # a second search must read the cache, not build
    from bertcli.retrieval.index import open_index

    s, r = ann_search(open_index(idx.path), queries, 5, "hnsw", ef_search=256)
    es, er = search_vectors(idx, queries, 5)
    assert (r == er).float().mean() >= 0.95
    assert abs(float(s[0, 0]) - float(es[0, 0])) < 1e-5


def test_ivf_with_every_cell_probed_is_exact(synthetic):
    from bertcli.retrieval.ann import ann_recall, resolve

    idx, _, queries = synthetic
    nlist = resolve("ivf", idx.count)["nlist"]
    assert nlist == min(int(4 * 3000 ** 0.5), 3000 // 39)
    assert ann_recall(idx, queries, "ivf", nprobe=nlist) == 1.0
    assert ann_recall(idx, queries, "ivf", nprobe=1) < 1.0


def test_bad_ann_options(synthetic, cli):
    from bertcli.errors import ConfigError
    from bertcli.retrieval.ann import resolve

    with pytest.raises(ConfigError, match="--ann flat: valid values: hnsw, ivf"):
        resolve("flat", 10)
    with pytest.raises(ConfigError, match="--ef-search must be a positive integer"):
        resolve("hnsw", 10, ef_search=0)
    from conftest import one_error_line

    idx = synthetic[0]
    one_error_line(cli("search", "--index", idx.path, "x", "--nprobe", "4"), "--nprobe needs --ann")
    one_error_line(cli("search", "--index", idx.path, "x", "--ann", "ivf", "--m", "4"), "--ann ivf takes")
