"""Near-duplicate prompts: MinHash LSH clusters on real text, marked with cluster and representative, never deleted."""

from __future__ import annotations

import json

import pytest

from curation.dedup import MinHashParams, lsh_bands, mark_near_duplicates, near_duplicate_clusters
from curation.ingest.pipeline import IngestOptions, ingest_paths

GSM = IngestOptions(kind="sft", mapping={"prompt": "question", "response": "answer"})


@pytest.fixture
def gsm_with_copies(shared_data, tmp_path):
    """300 real GSM8K problems, then 60 edited copies (one word appended) and 40 reworded answers only."""
    rows = [json.loads(x) for x in (shared_data / "gsm8k/test.jsonl").open()][:300]
    edited = [{"question": r["question"] + " Explain.", "answer": r["answer"]} for r in rows[:60]]
    same_q = [{"question": r["question"], "answer": r["answer"] + " Done."} for r in rows[100:140]]
    path = tmp_path / "gsm_copies.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + edited + same_q))
    return path


def test_near_duplicates_marked_not_deleted(store, gsm_with_copies):
    (res,) = ingest_paths(store, [str(gsm_with_copies)], GSM)
    assert res.accepted == 400  # edited copies are different content: no exact duplicates
    counts = mark_near_duplicates(store, ["sft"])
    con = store.connect()
    try:
        near = con.sql(
            "SELECT s.source_row, c.source_row AS rep_row, n.representative, n.similarity FROM near_duplicates n "
            "JOIN sft s ON s.id = n.id JOIN sft c ON c.id = n.cluster ORDER BY s.source_row"
        ).fetchall()
        total = con.sql("SELECT count(*) FROM sft").fetchall()[0][0]
    finally:
        con.close()
    assert total == 400  # marking never deletes
    members = {row: (rep, is_rep, sim) for row, rep, is_rep, sim in near}
    for k in range(60):  # each edited copy joins its original, which (ingested first) represents the cluster
        assert members[300 + k][0] == k and not members[300 + k][1] and 0.8 <= members[300 + k][2] <= 1.0
        assert members[k] == (k, True, 1.0)
    for k in range(40):  # same question, different answer: the prompt is identical
        assert members[360 + k][:2] == (100 + k, False) and members[360 + k][2] == 1.0
    assert counts["sft"] == 100 == sum(not is_rep for _, is_rep, _ in members.values())


def test_threshold_is_configurable(gsm_with_copies, shared_data):
    rows = [json.loads(x) for x in gsm_with_copies.open()]
    texts = [r["question"] for r in rows]
    strict, _ = near_duplicate_clusters(texts, MinHashParams(threshold=0.995))
    loose, _ = near_duplicate_clusters(texts, MinHashParams(threshold=0.8))
    n_strict = sum(int(r) != i for i, r in enumerate(strict))
    n_loose = sum(int(r) != i for i, r in enumerate(loose))
    # at 0.995 the identical questions cluster, and the edited ones only where the MinHash estimate
    # of their ~0.97 Jaccard happens to reach 1.0 (rare with 128 permutations)
    assert 40 <= n_strict <= 45 and n_loose == 100


def test_exact_duplicates_across_files_and_cli(store, shared_data):
    """The three AlpacaEval files share their 805 instructions: identical prompts cluster across files."""
    files = sorted((shared_data / "alpaca-eval").glob("*.json"))
    ingest_paths(store, [str(f) for f in files])
    mark_near_duplicates(store, ["pair"])
    con = store.connect()
    try:
        (n_pairs, n_prompts) = con.sql(
            "SELECT count(*), count(DISTINCT prompt[1].content) FROM pairs"
        ).fetchall()[0]
        non_rep = con.sql("SELECT count(*) FROM near_duplicates WHERE NOT representative").fetchall()[0][0]
        reps_first = con.sql(
            "SELECT bool_and(r.source <= s.source) FROM near_duplicates n JOIN pairs s ON s.id = n.id "
            "JOIN pairs r ON r.id = n.cluster"
        ).fetchall()[0][0]
    finally:
        con.close()
    assert non_rep >= n_pairs - n_prompts > 1500
    assert reps_first  # the representative is from the file ingested first (sorted names)


def test_lsh_banding():
    assert lsh_bands(0.8, 128) == 16
    for t in (0.5, 0.7, 0.9):
        b = lsh_bands(t, 128)
        assert 128 % b == 0 and (1 / b) ** (b / 128) <= t + 0.05
