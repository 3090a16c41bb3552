"""Near-duplicate marks are derived state: they record what they were computed from (committed units and
MinHash parameters) and are recomputed whenever stale, so an ingest killed between committing a unit and
marking it (or a build after such an ingest) never keeps the near-copies a fresh store would drop."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.builds.build import build
from curation.cli import app
from curation.ingest.dedup import MinHashParams, recorded_state, stale_kinds
from curation.ingest.pipeline import ingest_paths

REPO = Path(__file__).resolve().parents[1]
N_COPIES = 40


def _last_reply(transcript: str) -> str:
    return transcript.rsplit("\n\nAssistant:", 1)[-1]


@pytest.fixture(scope="module")
def hh_with_copies(shared_data, tmp_path_factory) -> Path:
    """300 real HH harmless pairs, then near-copies of 40 of them: a word appended to both final replies
    (replies of 25+ words, so the copy stays near-identical: word 3-gram Jaccard above 0.9)."""
    with gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for _, line in zip(range(300), fh, strict=False)]
    long = [
        r
        for r in rows
        if min(len(_last_reply(r["chosen"]).split()), len(_last_reply(r["rejected"]).split())) >= 25
    ]
    assert len(long) >= N_COPIES
    copies = [
        {"chosen": r["chosen"] + " Okay.", "rejected": r["rejected"] + " Okay."} for r in long[:N_COPIES]
    ]
    path = tmp_path_factory.mktemp("hh") / "hh-copies.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + copies))
    return path


def _near_dropped(res) -> list[dict]:
    acc = pq.read_table(res.path / "accounting.parquet").to_pylist()
    return [r for r in acc if r["consumer"] == "rm" and r["status"] == "near_duplicate"]


def test_build_recomputes_marks_an_ingest_left_undone(store, hh_with_copies):
    (res,) = ingest_paths(store, [str(hh_with_copies)])  # the unit commits; marking never ran
    assert res.accepted + res.quarantined == 300 + N_COPIES and res.quarantined <= 2
    assert not store.files("dedup/*.parquet")
    assert stale_kinds(store) == {"pair": MinHashParams()}
    built = build(store, "default")
    dropped = _near_dropped(built)
    assert len(dropped) == N_COPIES and all(r["source_row"] >= 300 for r in dropped)
    state = recorded_state(store, "pair")
    assert state["units"] == [res.unit] and state["params"]["threshold"] == 0.8
    assert stale_kinds(store) == {}
    # a second file committed without marking makes the marks stale again; the next build catches up
    lines = hh_with_copies.read_text().splitlines()[:N_COPIES]
    more = hh_with_copies.with_name("hh-more-copies.jsonl")
    more.write_text(
        "".join(json.dumps({k: v + " Sure." for k, v in json.loads(x).items()}) + "\n" for x in lines)
    )
    (res2,) = ingest_paths(store, [str(more)])
    assert set(stale_kinds(store)) == {"pair"}
    dropped = _near_dropped(build(store, "default"))
    assert sum(r["source_file"] == str(hh_with_copies) for r in dropped) == N_COPIES
    again = {r["source_row"] for r in dropped if r["source_file"] == str(more)}
    long_rows = {
        i
        for i, x in enumerate(lines)
        if min(len(_last_reply(v).split()) for v in json.loads(x).values()) >= 25
    }
    assert long_rows and long_rows <= again  # their copies are near-identical: dropped
    assert recorded_state(store, "pair")["units"] == sorted([res.unit, res2.unit])


def test_rerun_after_sigkill_between_commit_and_marking_marks(tmp_path, hh_with_copies):
    """A real SIGKILL of `curate ingest` after its unit is committed, as marking starts; the same command
    again skips the file ("already ingested") and still marks the near-copies."""
    root = tmp_path / "store"
    killer = (
        "import os, signal, sys\n"
        "import curation.ingest.dedup as d\n"
        "d.mark_near_duplicates = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from curation.cli import main\n"
        f"sys.argv = ['curate', 'ingest', {str(hh_with_copies)!r}, '--store', {str(root)!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", killer], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list(root.glob("ingest/*/pair.parquet")) and not list(root.glob("dedup/*.parquet"))

    rerun = CliRunner().invoke(app, ["ingest", str(hh_with_copies), "--store", str(root)])
    assert rerun.exit_code == 0, rerun.output
    out = " ".join(rerun.output.split())
    assert "already ingested" in out and f"pair: {N_COPIES} / {N_COPIES}" in out
    from curation.core.store import Store

    store = Store(root)
    assert stale_kinds(store) == {}
    assert len(_near_dropped(build(store, "default"))) == N_COPIES
    # nothing stale: the next ingest marks nothing and says so by printing no marking line
    again = CliRunner().invoke(app, ["ingest", str(hh_with_copies), "--store", str(root)])
    assert again.exit_code == 0 and "near-duplicates marked" not in again.output


def test_threshold_is_part_of_the_state_and_kept_by_later_runs(tmp_path, hh_with_copies):
    root = str(tmp_path / "store")
    runner = CliRunner()
    first = runner.invoke(app, ["ingest", str(hh_with_copies), "--store", root, "--near-threshold", "0.97"])
    assert first.exit_code == 0, first.output
    from curation.core.store import Store

    store = Store(root)
    assert recorded_state(store, "pair")["params"]["threshold"] == 0.97
    # a later ingest and a build without a threshold keep the one the marks were made with
    again = runner.invoke(app, ["ingest", str(hh_with_copies), "--store", root])
    assert again.exit_code == 0 and "near-duplicates marked" not in again.output
    build(store, "default")
    assert recorded_state(store, "pair")["params"]["threshold"] == 0.97
    # another threshold makes the marks stale: recomputed with it
    assert set(stale_kinds(store, MinHashParams(threshold=0.8))) == {"pair"}
    third = runner.invoke(app, ["ingest", str(hh_with_copies), "--store", root, "--near-threshold", "0.8"])
    assert third.exit_code == 0 and "near-duplicates marked" in third.output
    assert recorded_state(store, "pair")["params"]["threshold"] == 0.8


def test_marks_from_before_the_record_level_read_as_stale_and_are_recomputed(store, hh_with_copies):
    """A store marked by the previous version (prompt-level columns only, no recorded state): readers
    still work (record columns read NULL, `curate stats` says the marks are stale) and a build recomputes."""
    import pyarrow as pa

    from curation.ingest.dedup import mark_near_duplicates

    ingest_paths(store, [str(hh_with_copies)])
    with store.writer_lock():
        mark_near_duplicates(store, ["pair"])
    path = store.root / "dedup" / "near_pair.parquet"
    old = pq.read_table(path).select(["id", "kind", "cluster", "representative", "similarity"])
    pq.write_table(pa.Table.from_arrays(old.columns, names=old.column_names), path)  # no state metadata
    assert recorded_state(store, "pair") == {} and set(stale_kinds(store)) == {"pair"}
    stats = CliRunner().invoke(app, ["stats", "--store", str(store.root)])
    assert stats.exit_code == 0, stats.output
    assert "near-duplicate marks are stale for pair" in " ".join(stats.output.split())
    assert len(_near_dropped(build(store, "default"))) == N_COPIES
    assert recorded_state(store, "pair")["version"] and stale_kinds(store) == {}
