"""Near-duplicate preference data is dropped by pair, not by prompt: the three real AlpacaEval annotation
files (one prompt, three judged pairs), plus near-copies of some pairs and near-copies of some prompts."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from curation import catalog
from curation.builds.build import build
from curation.builds.policy import bundled_policy, load_policy, parse_policy
from curation.ingest.dedup import mark_near_duplicates
from curation.ingest.pipeline import ingest_paths

_WORD = re.compile(r"\w+")


def _grams(text: str) -> set[str]:
    """Exact word 3-gram set (the oracle for MinHash estimates)."""
    w = _WORD.findall(text.lower())
    return {" ".join(w[i : i + 3]) for i in range(max(1, len(w) - 2))}


def _jaccard(a: str, b: str) -> float:
    x, y = _grams(a), _grams(b)
    return len(x & y) / len(x | y)


def _policy(**dedup) -> object:
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"] = {"rm": data["consumers"]["rm"]}
    data["dedup"].update(dedup)
    data["split"]["eval_fraction"] = (
        0.5  # a split that separates a cluster's prompts unless it follows the cluster
    )
    return parse_policy(data)


@pytest.fixture(scope="module")
def ae_store(tmp_path_factory, shared_data):
    """The three AlpacaEval files, then 30 near-copy pairs (a word appended to both outputs of a row of the
    default file) and 20 near-copy prompts (a word appended to a long instruction, with another row's
    outputs: a distinct pair of the same prompt cluster)."""
    from curation.core.store import Store

    tmp = tmp_path_factory.mktemp("ae")
    files = sorted((shared_data / "alpaca-eval").glob("*.annotations.json"))
    base = json.loads(files[0].read_text())
    ok = [r for r in base if r["preference"] not in (None, 1.5)]
    copies = [
        {**r, "output_1": r["output_1"] + " Indeed.", "output_2": r["output_2"] + " Indeed."} for r in ok[:30]
    ]
    long = [r for r in ok[100:] if len(r["instruction"].split()) >= 25][:20]
    others = ok[400:420]
    edited = [
        {
            **r,
            "instruction": r["instruction"] + " Thanks.",
            "output_1": o["output_1"],
            "output_2": o["output_2"],
        }
        for r, o in zip(long, others, strict=True)
    ]
    extra = tmp / "ae-near-copies.json"
    extra.write_text(json.dumps(copies + edited))
    store = Store(tmp / "store")
    results = ingest_paths(store, [*map(str, files), str(extra)])
    assert not [r.error for r in results if r.error]
    with store.writer_lock():
        mark_near_duplicates(store, ["pair"])
    return store, copies, edited


def _acc(res) -> list[dict]:
    return [r for r in pq.read_table(res.path / "accounting.parquet").to_pylist() if r["consumer"] == "rm"]


def test_default_keeps_the_distinct_pairs_of_a_prompt_and_drops_near_copies(ae_store):
    store, copies, _edited = ae_store
    res = build(store, _policy())
    acc = _acc(res)
    con = catalog.connect(store)
    pairs = {
        r["id"]: r
        for r in con.sql(
            "SELECT id, source, source_row, prompt[1].content AS prompt, chosen[1].content AS chosen, "
            "rejected[1].content AS rejected FROM pairs"
        )
        .to_arrow_table()
        .to_pylist()
    }
    cluster = dict(con.sql("SELECT id, cluster FROM near_duplicates WHERE kind = 'pair'").fetchall())
    kept = [r for r in acc if r["status"] == "kept"]
    near = [r for r in acc if r["status"] == "near_duplicate"]
    # each near-copy pair is dropped as a near duplicate of the pair it copies
    dropped_copies = [r for r in near if r["source"] == "ae-near-copies"]
    assert len(dropped_copies) == len(copies) == 30
    for r in dropped_copies:
        original = pairs[r["outcome"].removeprefix("near_duplicate_of:")]
        assert original["source"] == "gpt-3.5-turbo-1106.annotations"
        assert original["prompt"] == copies[r["source_row"]]["instruction"] == pairs[r["id"]]["prompt"]
    # every pair dropped is near-identical to the pair it is dropped for, on both sides (exact Jaccard)
    for r in near:
        a, b = pairs[r["id"]], pairs[r["outcome"].removeprefix("near_duplicate_of:")]
        assert cluster[a["id"]] == cluster[b["id"]]
        assert min(_jaccard(a["chosen"], b["chosen"]), _jaccard(a["rejected"], b["rejected"])) > 0.6
    # the distinct pairs of one instruction (three judged files) are kept: most prompts keep three pairs
    per_prompt: dict[str, int] = {}
    for r in kept:
        key = cluster.get(r["id"], r["id"])
        per_prompt[key] = per_prompt.get(key, 0) + 1
    assert sum(n >= 3 for n in per_prompt.values()) > 700
    assert len(near) < 50 and len(kept) > 2300
    # the edited prompts are kept (their pairs are distinct), in their original prompt's cluster
    edited_kept = [r for r in kept if r["source"] == "ae-near-copies"]
    assert len(edited_kept) == 20 and all(r["id"] in cluster for r in edited_kept)


def test_prompt_level_stays_available_by_name(ae_store):
    store, copies, edited = ae_store
    acc = _acc(build(store, _policy(near_duplicates="drop_prompt"), name="by-prompt"))
    con = catalog.connect(store)
    (clusters, members, total) = con.sql(
        "SELECT count(DISTINCT cluster), count(*), (SELECT count(*) FROM pairs) FROM near_duplicates "
        "WHERE kind = 'pair'"
    ).fetchall()[0]
    kept = [r for r in acc if r["status"] == "kept"]
    near = [r for r in acc if r["status"] == "near_duplicate"]
    assert len(kept) == total - members + clusters  # one pair per prompt cluster
    assert len(near) == members - clusters > 1500
    keep = _acc(build(store, _policy(near_duplicates="keep"), name="keep-all"))
    assert sum(r["status"] == "kept" for r in keep) == total


def test_a_prompt_cluster_never_crosses_the_split(ae_store):
    """Whatever is dropped, the split follows the prompt's near-duplicate cluster, not its exact text (here
    nothing is dropped, so every near-copy prompt is in the shards)."""
    store, _copies, edited = ae_store
    res = build(store, _policy(near_duplicates="keep"))
    acc = {r["id"]: r for r in _acc(res) if r["status"] == "kept"}
    con = catalog.connect(store)
    clusters: dict[str, set[str]] = {}
    for rid, cl in con.sql("SELECT id, cluster FROM near_duplicates WHERE kind = 'pair'").fetchall():
        if rid in acc:
            clusters.setdefault(cl, set()).add(acc[rid]["split"])
    assert {"train", "eval"} <= set().union(*clusters.values())
    assert all(len(s) == 1 for s in clusters.values())
    # the edited prompts differ in text from their representative's and still share its split
    rows = con.sql(
        "SELECT n.id, n.cluster, p.prompt[1].content, r.prompt[1].content FROM near_duplicates n "
        "JOIN pairs p ON p.id = n.id JOIN pairs r ON r.id = n.cluster "
        "WHERE p.source = 'ae-near-copies' AND ends_with(p.prompt[1].content, ' Thanks.')"
    ).fetchall()
    assert len(rows) == len(edited) == 20
    for rid, rep, text, rep_text in rows:
        assert text != rep_text and rid in acc and rep in acc
        assert acc[rid]["split"] == acc[rep]["split"]
    assert {acc[rid]["split"] for rid, *_ in rows} == {"train", "eval"}


def test_explain_names_the_level_that_dropped_a_pair(ae_store):
    from curation.builds.explain import explain

    store, _copies, _edited = ae_store
    by_pair = _acc(build(store, _policy(), name="by-pair"))
    by_prompt = _acc(build(store, _policy(near_duplicates="drop_prompt"), name="by-prompt-2"))
    dropped = {r["id"] for r in by_prompt if r["status"] == "near_duplicate"}
    copy = next(r for r in by_pair if r["status"] == "near_duplicate" and r["id"] in dropped)
    clauses = {b["build"]: b["clause"] for b in explain(store, copy["id"]).builds}
    assert clauses["by-pair"] == (
        "dedup.near_duplicates = drop: same prompt cluster and near-identical responses as that record "
        "(record level)"
    )
    assert clauses["by-prompt-2"] == (
        "dedup.near_duplicates = drop_prompt: its prompt is a near duplicate of that record's (prompt level)"
    )
