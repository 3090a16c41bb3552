"""spurious_groups and semantic near-duplicates on real HH-RLHF pairs."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from curation import catalog
from curation.core.models import DEFAULT_ENCODER
from curation.scoring import run_scorer
from curation.scoring.cache import ResultSpec, ids_fingerprint
from curation.scoring.embeddings import Embedder
from curation.scoring.semantic import clusters, near_pairs
from curation.scoring.spurious_groups import balanced_weights, qdiv_head
from tests.fixtures.stores import build_store


@pytest.fixture(scope="module")
def hh_store(tmp_path_factory, shared_data):
    return build_store(tmp_path_factory.mktemp("groups"), shared_data, hh=80)


def q(st, sql):
    with contextlib.closing(catalog.connect(st)) as con:
        return con.sql(sql).to_arrow_table().to_pylist()


def test_spurious_groups_features_weights_and_table(hh_store):
    s = run_scorer(hh_store, "spurious_groups", clusters=4, progress=False)
    run_scorer(hh_store, "length_bias", progress=False)
    r = q(hh_store, "SELECT * FROM scored_pairs")
    n = len(r)
    assert s.records == n and s.report["loss_source"] == "quick-crossfit-logistic"
    for x in r:
        assert x["group_id"] == 2 * int(x["len_chosen"] > x["len_rejected"]) + x["feat_qdiv"]
        assert x["feat_len_sign"] == int(np.sign(x["len_chosen"] - x["len_rejected"]))
        assert 0 <= x["feat_emb_cluster"] < 4 and x["feat_source"] == "hh"
        text = x["chosen"][-1]["content"].lower()
        if "i'm sorry" in text or "i cannot" in text:
            assert x["feat_refusal_chosen"]
    w = np.array([x["group_weight"] for x in r])
    g = np.array([x["group_id"] for x in r])
    assert w.mean() == pytest.approx(1.0)
    totals = [w[g == k].sum() for k in np.unique(g)]
    assert np.allclose(totals, totals[0])  # every group carries the same total weight
    table = q(hh_store, "SELECT * FROM score_groups")
    assert sum(t["size"] for t in table) == n and all(t["mean_margin"] is None for t in table)
    again = run_scorer(hh_store, "spurious_groups", clusters=4, progress=False)
    assert again.skipped
    # the key is the one of the documented params: a refactor that changed it would orphan stores and manifests
    emb = Embedder(hh_store, device="auto")
    params = {"clusters": 4, "kl_weight": 1.0, "steps": 300, "max_weight": 5.0, "seed": 0}
    params |= {"tokenizer": DEFAULT_ENCODER, "embeddings": emb.cache.key, "reward_margin": None}
    ids = [x["id"] for x in r]
    assert s.key == ResultSpec("spurious_groups", "2", emb.fingerprint, params, ids_fingerprint(ids)).key


def test_spurious_groups_use_reward_margin_when_present(hh_store):
    run_scorer(
        hh_store, "reward_margin", backend="crossfit", folds=3, repeats=1, head="logistic", progress=False
    )
    s = run_scorer(hh_store, "spurious_groups", clusters=4, progress=False)
    assert s.report["loss_source"] == "reward_margin" and not s.skipped
    table = q(hh_store, "SELECT * FROM score_groups")
    pairs = q(hh_store, "SELECT group_id, margin, quality_class FROM scored_pairs")
    for t in table:  # each group's margin and flagged share are its pairs' reward_margin results
        members = [p for p in pairs if p["group_id"] == t["group_id"]]
        assert t["size"] == len(members)
        assert t["mean_margin"] == pytest.approx(np.mean([p["margin"] for p in members]))
        assert t["flagged_share"] == pytest.approx(np.mean([p["quality_class"] != "clean" for p in members]))
    flagged = np.mean([p["quality_class"] != "clean" for p in pairs])
    assert 0.3 <= flagged <= 0.5, flagged  # reward_margin flags its lowest 40 % (incorrect + ambiguous)


def test_qdiv_head_finds_the_hard_group_and_keeps_label_balance():
    rng = np.random.default_rng(0)
    n = 600
    h = rng.normal(size=(n, 16))
    y = rng.integers(0, 2, n)
    loss = (h[:, 3] > 0.5).astype(float) * 2 + rng.normal(scale=0.1, size=n)  # hard pairs along dim 3
    z = qdiv_head(h, y, loss, kl_weight=1.0, steps=300)
    assert loss[z == 1].mean() > loss[z == 0].mean() + 1.0
    assert abs(y[z == 1].mean() - y.mean()) < 0.1 and abs(y[z == 0].mean() - y.mean()) < 0.1


def test_balanced_weights_equalise_groups_but_never_let_a_tiny_group_dominate():
    assert balanced_weights(np.array([0, 0, 0, 1])).tolist() == [2 / 3, 2 / 3, 2 / 3, 2.0]
    # the demo's case: two groups of one pair among 2,600 made each of those pairs weigh 650
    groups = np.array([0] * 1500 + [1] * 1098 + [2, 3])
    w = balanced_weights(groups)
    assert w.max() == 5.0 and abs(w.mean() - 1.0) < 1e-9
    big = [w[groups == g].sum() for g in (0, 1)]
    assert abs(big[0] - big[1]) < 1e-6 * big[0]  # the large groups still carry equal totals
    with pytest.raises(ValueError, match="max_weight"):
        balanced_weights(groups, max_weight=0.5)


def test_blockwise_near_pairs_do_not_depend_on_block_size():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(50, 32))
    x = np.vstack([base, base[:10] + rng.normal(scale=0.05, size=(10, 32))])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    big = sorted((i, j) for i, j, _ in near_pairs(x, 0.95, block=4096))
    small = sorted((i, j) for i, j, _ in near_pairs(x, 0.95, block=7))
    assert big == small and {(i, i + 50) for i in range(10)} <= set(big)
    roots = clusters(len(x), near_pairs(x, 0.95, block=7))
    assert all(roots[i + 50] == i for i in range(10))


def test_semantic_dedup_view(hh_store):
    s = run_scorer(hh_store, "semantic_dedup", kinds="pair", threshold=0.9, progress=False)
    r = q(
        hh_store, "SELECT id, sem_cluster, sem_representative FROM scored_pairs WHERE sem_cluster IS NOT NULL"
    )
    reps = {x["id"] for x in r if x["sem_representative"]}
    assert all(x["sem_cluster"] in reps for x in r)
    assert sum(not x["sem_representative"] for x in r) == s.report["pair_near_duplicates"]
    # the result key is built from the documented params (a change would orphan existing results)
    from curation.scoring.cache import ResultSpec, ids_fingerprint
    from curation.scoring.embeddings import Embedder

    emb = Embedder(hh_store, progress=False)
    params = {"threshold": 0.9, "kinds": ["pair"], "embeddings": emb.cache.key}
    ids = [f"pair:{x['id']}" for x in q(hh_store, "SELECT id FROM pairs")]
    assert s.key == ResultSpec("semantic_dedup", "1", emb.fingerprint, params, ids_fingerprint(ids)).key
