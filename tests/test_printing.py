"""Data is printed as data (issue 23 item 6): text that looks like rich markup (Llama-2 chat's
``[INST] ... [/INST]``, ``[red]``, ``[/x]``) or holds terminal control codes is shown as it is, in
tables, explain, build summaries and error messages, and never crashes a command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curation import catalog
from curation.cli import app
from curation.core.store import Store

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
ESC = "\x1b"
#: Text a hostile row may hold, each kept in real Alpaca rows; the last one is a terminal escape.
MARKUP = [
    "[/INST]",
    "[/x]",
    "[red]",
    "[link=file:///etc/passwd]",
    "[bold]",
    "\\[/]",
    ESC + "]0;pwned\x07" + ESC + "[2J",
]


def llama2(instruction: str, extra: str) -> str:
    user = instruction + (f"\n{extra}" if extra else "")
    return f"<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n{user} [/INST]"


def chat_rows(shared_data: Path) -> list[dict]:
    """Real Alpaca rows as Llama-2 chat messages; every other answer ends with one of ``MARKUP``, and
    every tenth row has a role spelled ``[/INST]`` (quarantined, so `curate stats` shows the reason)."""
    rows = json.loads((shared_data / "llama-factory" / "alpaca_en_demo.json").read_text())[:30]
    out = []
    for i, r in enumerate(rows):
        answer = r["output"] + (f" {MARKUP[i % len(MARKUP)]}" if i % 2 else "")
        role = "[/INST]" if i % 10 == 9 else "user"
        prompt = {"role": role, "content": llama2(r["instruction"], r["input"])}
        out.append({"messages": [prompt, {"role": "assistant", "content": answer}]})
    return out


@pytest.fixture(scope="module")
def chat_store(tmp_path_factory, shared_data) -> Path:
    tmp = tmp_path_factory.mktemp("printing")
    src = tmp / "llama2_chat.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in chat_rows(shared_data)))
    res = runner.invoke(app, ["ingest", str(src), "--store", str(tmp / "store")])
    assert res.exit_code == 0, res.output
    return tmp / "store"


def _sql(root: Path, query: str, *extra: str):
    return runner.invoke(app, ["sql", query, "--store", str(root), *extra])


def test_sql_prints_llama2_chat_text_as_it_is(chat_store):
    """`curate sql` died with "closing tag '[/INST]' ... doesn't match any open tag"."""
    res = _sql(
        chat_store, "SELECT right(messages[1].content, 7) AS tail, messages[1].content AS prompt FROM sft"
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("[/INST]") >= 27  # every kept row's prompt ends with it
    res = _sql(
        chat_store, "SELECT right(messages[2].content, 30) AS tail FROM sft ORDER BY id", "--limit", "0"
    )
    assert res.exit_code == 0, res.output
    for text in ("[/x]", "[red]", "[bold]", "[link=file:///etc/passwd]", "\\[/]"):
        assert text in res.output, text


def test_control_characters_in_data_are_shown_not_sent(chat_store):
    res = _sql(
        chat_store,
        "SELECT right(messages[2].content, 14) AS tail FROM sft WHERE contains(messages[2].content, chr(27))",
    )
    assert res.exit_code == 0, res.output
    assert ESC not in res.output and "\x07" not in res.output
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in res.output


def test_stats_prints_quarantine_reasons_that_hold_markup(chat_store):
    """`curate stats` died on the reason "unknown role '[/INST]'"."""
    res = runner.invoke(app, ["stats", "--store", str(chat_store)])
    assert res.exit_code == 0, res.output
    assert "unknown role '[/INST]'" in res.output


def test_paths_and_records_that_look_like_markup_print_as_data(tmp_path, shared_data):
    """Ingest from, and build in, folders whose paths hold ``[/x]`` (the folders ``[`` and ``x]``) and a
    file name holding ``[red]``: the ingest lines, the build summary and explain all print them."""
    base = tmp_path / "[" / "x]"
    base.mkdir(parents=True)
    src = base / "llama2 [red]chat.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in chat_rows(shared_data)))
    root = base / "store"
    res = runner.invoke(app, ["ingest", str(src), "--store", str(root)])
    assert res.exit_code == 0, res.output
    assert "[/x]/llama2[red]chat.jsonl" in "".join(res.output.split())
    res = runner.invoke(app, ["build", "--store", str(root), "--name", "v1"])
    assert res.exit_code == 0, res.output
    assert "[/x]/store/curated/v1" in "".join(res.output.split())
    con = catalog.connect(Store(root))
    try:
        rid = con.sql(
            "SELECT id FROM sft WHERE contains(messages[2].content, '[/x]') ORDER BY id"
        ).fetchall()[0][0]
    finally:
        con.close()
    res = runner.invoke(app, ["explain", rid, "--store", str(root)])
    assert res.exit_code == 0, res.output
    text = "".join(res.output.split())
    assert "[/x]/llama2[red]chat.jsonl" in text and "buildv1" in text and "(sft)" in text


def test_errors_print_paths_and_messages_as_data(tmp_path):
    """The error line itself went through markup: a store path holding `[/x]` crashed `main`."""
    missing = tmp_path / "[" / "x]" / "[red]nostore"
    (tmp_path / "[" / "x]").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "curation.cli", "sql", "SELECT 1", "--store", str(missing)],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and "[/x]" in proc.stderr and "[red]nostore" in proc.stderr
