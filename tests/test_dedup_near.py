"""Near-duplicate prompts: MinHash LSH clusters on real text, marked with cluster and representative, never deleted."""

from __future__ import annotations

import json

import pytest

from curation import catalog
from curation.ingest.dedup import MinHashParams, lsh_bands, mark_near_duplicates, near_duplicate_clusters
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
    con = catalog.connect(store)
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
    con = catalog.connect(store)
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


def test_record_level_marks_near_identical_records_within_a_prompt_cluster(store, shared_data, tmp_path):
    """Same question: an answer with one word appended is a record-level near duplicate; another problem's
    answer is a distinct record of the same prompt cluster (both are prompt-level duplicates)."""
    rows = [json.loads(x) for x in (shared_data / "gsm8k/test.jsonl").open()][:200]
    near_copy = [{"question": r["question"], "answer": r["answer"] + " Done."} for r in rows[:30]]
    other = [
        {"question": r["question"], "answer": rows[199 - k]["answer"]} for k, r in enumerate(rows[30:60])
    ]
    path = tmp_path / "gsm_answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + near_copy + other))
    ingest_paths(store, [str(path)], GSM)
    mark_near_duplicates(store, ["sft"])
    con = catalog.connect(store)
    try:
        near = con.sql(
            "SELECT s.source_row, c.source_row, n.representative, r.source_row, n.record_representative, "
            "n.record_similarity FROM near_duplicates n JOIN sft s ON s.id = n.id "
            "JOIN sft c ON c.id = n.cluster JOIN sft r ON r.id = n.record_cluster"
        ).fetchall()
    finally:
        con.close()
    m = {row: rest for row, *rest in near}
    for k in range(30):  # the near copy: same prompt cluster, same record cluster
        assert m[200 + k][:2] == [k, False] and m[200 + k][2:4] == [k, False] and m[200 + k][4] >= 0.8
        assert m[k] == [k, True, k, True, 1.0]
    for k in range(30):  # another answer to the same question: a prompt duplicate, a distinct record
        assert m[230 + k][:2] == [30 + k, False] and m[230 + k][2:4] == [230 + k, True]
    assert len(m) == 120


def test_ranking_records_differ_by_grades(store, shared_data, tmp_path):
    """Rankings of one prompt with the same candidates are near-identical only with the same order."""

    def mixed(r: dict) -> bool:  # some model solutions right, some wrong: flipping them changes the order
        return len({v["is_correct"] for v in r.values() if isinstance(v, dict)}) == 2

    lines = (shared_data / "gsm8k/example_model_solutions.jsonl").open()
    rows = [r for r in map(json.loads, lines) if mixed(r)][:40]
    regraded = []
    for r in rows[:20]:
        flipped = json.loads(json.dumps(r))
        for val in flipped.values():
            if isinstance(val, dict) and "is_correct" in val:
                val["is_correct"] = not val["is_correct"]
        regraded.append(flipped)
    copies = []
    for r in rows[20:40]:
        c = json.loads(json.dumps(r))
        c["question"] = c["question"] + " Show your work."
        copies.append(c)
    path = tmp_path / "solutions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + regraded + copies))
    (res,) = ingest_paths(store, [str(path)])
    assert res.kind == "ranking" and res.accepted == 80
    mark_near_duplicates(store, ["ranking"])
    con = catalog.connect(store)
    try:
        near = dict(
            con.sql(
                "SELECT s.source_row, n.record_representative FROM near_duplicates n "
                "JOIN rankings s ON s.id = n.id WHERE NOT n.representative"
            ).fetchall()
        )
    finally:
        con.close()
    assert sorted(near) == list(range(40, 80))
    assert all(near[40 + k] for k in range(20))  # other grades: a distinct record of the same prompt
    assert not any(near[60 + k] for k in range(20))  # same candidates and grades, edited prompt


def test_large_prompt_clusters_take_lsh_candidates_with_the_same_result(
    store, shared_data, tmp_path, monkeypatch
):
    """One question answered 150 ways (real GSM8K answers of other problems, 40 of them twice with a word
    appended): the LSH path of a large cluster finds the same record clusters as comparing every two."""
    import curation.ingest.dedup as dedup

    rows = [json.loads(x) for x in (shared_data / "gsm8k/test.jsonl").open()][:150]
    q = rows[0]["question"]
    answers = [{"question": q, "answer": r["answer"]} for r in rows]
    copies = [{"question": q, "answer": r["answer"] + " Done."} for r in rows[:40]]
    path = tmp_path / "one_question.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in answers + copies))
    ingest_paths(store, [str(path)], GSM)

    def marks() -> dict[int, tuple[int, bool]]:
        mark_near_duplicates(store, ["sft"])
        con = catalog.connect(store)
        try:
            return {
                row: (rep, is_rep)
                for row, rep, is_rep in con.sql(
                    "SELECT s.source_row, r.source_row, n.record_representative FROM near_duplicates n "
                    "JOIN sft s ON s.id = n.id JOIN sft r ON r.id = n.record_cluster"
                ).fetchall()
            }
        finally:
            con.close()

    assert dedup.PAIRWISE_MAX < 190
    lsh = marks()
    monkeypatch.setattr(dedup, "PAIRWISE_MAX", 1000)
    assert marks() == lsh
    assert len(lsh) == 190
    assert all(lsh[150 + k] == (k, False) for k in range(40))  # each copy joins the answer it copies
    distinct = {rep for rep, _ in lsh.values()}
    assert len(distinct) >= 140  # other problems' answers stay distinct records (a few may be alike)
