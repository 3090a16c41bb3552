"""`curate ingest` / `curate stats` end to end: accounting printed per source, re-runs add nothing, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from curation.cli import app


def test_ingest_prints_accounting_and_is_idempotent(demo_data, tmp_path):
    runner = CliRunner()
    store = str(tmp_path / "store")
    args = ["ingest", str(demo_data / "openai-cookbook"), str(demo_data / "llama-factory"), "--store", store]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    out = first.output
    assert "toy_chat_fine_tuning" in out and "alpaca_en_demo" in out and "dpo_en_demo" in out
    # rows read, rows quarantined, records, accepted, records quarantined, duplicates for the cookbook
    # file: 5 = 0 + 5 rows, 5 = 3 + 2 + 0 records
    line = next(x for x in out.splitlines() if "toy_chat_fine_tuning" in x and "│" in x)
    assert [c.strip() for c in line.split("│") if c.strip()][-6:] == ["5", "0", "5", "3", "2", "0"]
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.output.count("skipped (already ingested)") == 3
    stats = runner.invoke(app, ["stats", "--store", store])
    assert stats.exit_code == 0 and "role order" in stats.output and "records by source" in stats.output


def test_unreadable_files_fail_clearly(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "broken.json"
    bad.write_text('[{"a": 1}, {"a": ')
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"foo": 1, "bar": 2}\n')
    res = runner.invoke(app, ["ingest", str(bad), str(odd), "--store", str(tmp_path / "s")])
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert "broken.json: not valid JSON" in text
    assert "odd.jsonl: unknown layout (fields: bar, foo)" in text and "--map" in text
    missing = runner.invoke(app, ["ingest", str(tmp_path / "nope.jsonl"), "--store", str(tmp_path / "s")])
    assert missing.exit_code == 1 and "no such file" in missing.output


def _python(code: str, **env: str) -> str:
    """stdout of ``python -c code`` in a fresh interpreter, with ``env`` instead of the allocator variable."""
    clean = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def test_allocator_settings_come_before_polars():
    """`curate` sets polars' jemalloc options before polars loads (jemalloc reads them once, at load):
    importing the CLI must not import polars, and a value the user set wins."""
    code = (
        "import os, sys; from curation.cli import configure_allocators as c; "
        "print('polars' in sys.modules, c(), os.environ['_RJEM_MALLOC_CONF'])"
    )
    assert _python(code) == "False True dirty_decay_ms:30000,muzzy_decay_ms:30000"
    assert _python(code, _RJEM_MALLOC_CONF="narenas:2") == "False True narenas:2"
    late = "import polars; from curation.cli import configure_allocators as c; print(c())"
    assert _python(late) == "False"


def test_ingest_help_lists_the_registered_readers():
    """`curate ingest --help` lists every registered reader with its summary, in detection order."""
    from curation.ingest.readers import READERS

    res = CliRunner().invoke(app, ["ingest", "--help"])
    assert res.exit_code == 0
    text = "".join(res.output.replace("│", "").split())  # the terminal's width wraps the lines anywhere
    places = [text.find("".join(f"{r.name}: {r.summary}".split())) for r in READERS]
    assert len(READERS) == 11 and -1 not in places and places == sorted(places)
