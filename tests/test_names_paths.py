"""Names and paths a user gives (issue 23 items 2 and 11): one validator, paths that are paths.

Every name a user gives for a place in the store (build, source, report file, store sub-path) is one
plain name checked by ``curation.core.store.safe_name``; every path is taken as a path (a store at ``a[1]``
is that folder, not the glob that also matches ``a1``; an input called ``data[1].jsonl`` is that file).
The lists below are the cases tried; add a case to a list and every command that takes such a name or
path tries it. docs/reliability.md ("Round two") lists the results.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from curation import catalog
from curation.builds.build import build, build_names, read_manifest
from curation.builds.explain import explain
from curation.cli import app
from curation.core.errors import StoreError
from curation.core.names import safe_name
from curation.core.store import Store
from curation.ingest.sources import SourceError, expand_paths
from tests.fixtures.inputs import subset_lines
from tests.fixtures.stores import ingest

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

#: Names that are not one plain name: each must be refused wherever a user gives a name.
HOSTILE_NAMES = [
    ".",
    "..",
    "",
    "/",
    "a/b",
    "a\\b",
    "v1/",
    "v1/rm",
    "v1/manifest.json",
    "/etc",
    "../outside",
    "a/../../b",
    "v1\x00",
    "v1\n",
    "\nv1",
    " v1",
    "v1 ",
    "v\t1",
    "\u0475" + "1",  # Cyrillic izhitsa, looks like v
    "v\u200b1",  # zero-width space
    "\uff561",  # fullwidth v
    "v\u202e1",  # right-to-left override
    "x" * 201,
    ".staging",
    ".lock",
    ".hidden",
    "-v1",
    "~v1",
    "$HOME",
    "*",
    "v?",
    "v[1]",
    "v]",
    "v1;rm",
    "a..b",
]
#: Plain names that are also names the store itself uses: accepted, and confined to their folder.
RESERVED_BUT_PLAIN = ["ingest", "scores", "curated", "dedup", "reports", "catalog.duckdb", "manifest.json"]
#: Folder names for store roots; the sibling store each one's glob reading also matched, where one does.
ODD_ROOTS = {
    "a[1]": "a1",
    "q?x": "qax",
    "s*t": "sxt",
    "b\\c": None,
    "br]k": None,
    "c{a,b}": None,
    "sp ace": None,
    "qu'ote": None,
    "nl\nx": None,
    "\u00fcn\u00ef": None,
    "p%20x": None,
    "h#x": None,
    "[bold]": None,
}
#: Input file names that are names, not patterns (each beside a file its glob reading would match).
ODD_FILES = {"data[1].jsonl": "data1.jsonl", "what?.jsonl": "whatx.jsonl", "star*.jsonl": "starry.jsonl"}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data) -> dict[str, Path]:
    """Real rows: 60 HH-RLHF pairs, 40 Alpaca SFT rows (as JSONL), and two other HH subsets."""
    tmp = tmp_path_factory.mktemp("names_inputs")
    hh = shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    alpaca = json.loads((shared_data / "llama-factory" / "alpaca_en_demo.json").read_text())
    sft = tmp / "alpaca.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in alpaca[:40]))
    return {
        "pairs": subset_lines(hh, tmp / "hh.jsonl", 60),
        "sft": sft,
        "pairs_small": subset_lines(hh, tmp / "hh_small.jsonl", 7),
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory, inputs) -> Path:
    """A store with the real pairs and SFT rows ingested and one build, ``v1``."""
    store = Store(tmp_path_factory.mktemp("names_template") / "store")
    ingest(store, [inputs["pairs"], inputs["sft"]])
    build(store, "default", "v1")
    return store.root


@pytest.fixture
def store(template, tmp_path) -> Store:
    dst = tmp_path / "store"
    shutil.copytree(template, dst, ignore=shutil.ignore_patterns(".lock"))
    return Store(dst)


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256): to show a refused command changed nothing."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def one_line(output: str) -> str:
    return " ".join(output.split())


# -------------------------------------------------------------- the validator
@given(st.one_of(st.sampled_from(HOSTILE_NAMES + RESERVED_BUT_PLAIN), st.text(max_size=220)))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_name_is_accepted_only_as_one_plain_component(tmp_path, name):
    store = Store(tmp_path / "s")
    try:
        safe_name(name)
    except StoreError:
        with pytest.raises(StoreError):
            store.path("curated", name)
        return
    assert name.isascii() and name.isprintable() and "/" not in name and "\\" not in name
    assert ".." not in name and name[0].isalnum() and len(name) <= 200
    path = store.path("curated", name)
    assert path.parent == store.root / "curated" and path.name == name


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_a_name_made_from_any_text_is_a_valid_name(text):
    from curation.core.names import plain_name

    made = plain_name(text)
    assert safe_name(made) == made
    if text and _valid(text):
        assert made == text


def _valid(name: str) -> bool:
    try:
        safe_name(name)
    except StoreError:
        return False
    return True


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_store_paths_never_split_or_drop_a_name(tmp_path, name):
    """`Store.path` split its arguments into parts: "." had none and "v1/rm" had two valid ones."""
    store = Store(tmp_path / "s")
    with pytest.raises(StoreError):
        store.path("curated", name)
    with pytest.raises(StoreError):
        store.write_parquet(
            pa.table({"a": [1]}), f"curated/{name}/x.parquet"
        ) if "/" not in name else store.path(name)
    assert not (store.root / "curated").exists()


# ------------------------------------------------------------ build --name
def test_build_refuses_every_hostile_name_and_leaves_the_builds_alone(store):
    """`curate build --name .` exited 0 and deleted every build; `--name v1/rm` overwrote part of v1;
    `--name v1/manifest.json` turned a manifest into a folder."""
    before = tree_digest(store.root / "curated")
    for name in HOSTILE_NAMES:
        res = runner.invoke(app, ["build", "--store", str(store.root), "--name", name])
        assert res.exit_code == 1, (name, res.output)
        assert "invalid build name" in one_line(res.output), (name, res.output)
        assert "Traceback" not in res.output
    assert tree_digest(store.root / "curated") == before
    assert build_names(store) == ["v1"]
    rid = _a_pair_id(store)
    res = runner.invoke(app, ["explain", rid, "--store", str(store.root), "--build", "v1"])
    assert res.exit_code == 0 and "build v1" in res.output


@pytest.mark.parametrize("command", ["explain", "report"])
def test_explain_and_report_refuse_hostile_build_names(store, tmp_path, command):
    rid = _a_pair_id(store)
    for name in HOSTILE_NAMES[:12]:
        args = [rid] if command == "explain" else ["--out", str(tmp_path / "r.html")]
        res = runner.invoke(app, [command, *args, "--store", str(store.root), "--build", name])
        assert res.exit_code == 1 and "invalid build name" in one_line(res.output), (name, res.output)
    assert not (tmp_path / "r.html").exists()


def test_reserved_store_names_as_build_names_stay_inside_curated(store):
    top = sorted(p.name for p in store.root.iterdir() if p.name != ".lock")
    outside = tree_digest(store.root / "ingest")
    for name in RESERVED_BUT_PLAIN:
        build(store, "default", name)
        assert read_manifest(store, name)["name"] == name
    assert sorted(p.name for p in store.root.iterdir() if p.name != ".lock") == top
    assert tree_digest(store.root / "ingest") == outside
    assert build_names(store) == sorted(["v1", *RESERVED_BUT_PLAIN])


def test_a_folder_that_only_looks_like_a_build_is_never_read_as_one(store):
    """What the old `--name v3/manifest.json` left (a folder called manifest.json) made `explain` crash
    with IsADirectoryError; folders with names no build can have are not builds either."""
    (store.root / "curated" / "v3" / "manifest.json").mkdir(parents=True)
    odd = store.root / "curated" / "not a build"
    odd.mkdir()
    shutil.copy(store.root / "curated" / "v1" / "manifest.json", odd / "manifest.json")
    assert build_names(store) == ["v1"]
    with pytest.raises(StoreError, match="no build 'v3'"):
        read_manifest(store, "v3")
    e = explain(store, _a_pair_id(store))
    assert {b["build"] for b in e.builds} == {"v1"}
    res = runner.invoke(app, ["report", "--store", str(store.root), "--build", "v3", "--out", "x.html"])
    assert res.exit_code == 1 and "no build 'v3'" in res.output


def test_symlinks_in_the_store_that_lead_out_are_never_followed(store, tmp_path):
    """Links planted in the store that lead out are never read, and never silently left out of a view
    either: every read names them (the user can remove them), and a build never writes through them."""
    outside = tmp_path / "outside"
    shutil.copytree(store.root / "curated" / "v1", outside / "evil")
    unit = next((store.root / "ingest").iterdir())
    shutil.copytree(unit, outside / "unit")
    os.symlink(outside / "evil", store.root / "curated" / "evil")
    with pytest.raises(StoreError, match="curated/evil/manifest.json links outside the store"):
        build_names(store)
    os.unlink(store.root / "curated" / "evil")
    os.symlink(outside / "unit", store.root / "ingest" / "evil-unit")
    with pytest.raises(StoreError, match="ingest/evil-unit/.* links outside the store"):
        catalog.connect(store)
    os.unlink(store.root / "ingest" / "evil-unit")
    con = catalog.connect(store)
    try:
        assert con.sql("SELECT count(*) FROM pairs").fetchall()[0][0] == 60 - _hh_duplicates(store)
    finally:
        con.close()
    os.symlink(outside / "evil", store.root / "curated" / "evil")
    with pytest.raises(StoreError, match="outside the store"):
        build(store, "default", "evil")
    assert (outside / "evil" / "manifest.json").read_bytes() == (
        store.root / "curated/v1/manifest.json"
    ).read_bytes()


def test_work_in_progress_folders_replaced_by_links_are_never_written_through(store, tmp_path, monkeypatch):
    """Round three: `.staging` replaced by a link out of the store between two runs: the next build wrote
    its shards there (rmtree refuses a link, and the error was ignored), then moved them in. `.replaced`
    as a link would pull a folder from outside in as a parked build. The writer lock removes both links."""
    outside = tmp_path / "outside"
    (outside / "wip").mkdir(parents=True)
    shutil.copytree(store.root / "curated" / "v1", outside / "parked" / "curated" / "v9")
    shutil.rmtree(store.root / ".staging", ignore_errors=True)
    os.symlink(outside / "wip", store.root / ".staging")
    os.symlink(outside / "parked", store.root / ".replaced")
    staged: list[Path] = []
    original = Store.new_staging_dir

    def recording(self: Store) -> Path:
        staged.append(original(self))
        return staged[-1]

    monkeypatch.setattr(Store, "new_staging_dir", recording)
    build(store, "default", "v2")
    assert staged and all(store.root.resolve() in p.resolve().parents for p in staged), staged
    assert not (store.root / ".staging").is_symlink() and not (store.root / ".replaced").exists()
    assert build_names(store) == ["v1", "v2"]  # v9 stayed outside, not restored as a build
    assert (outside / "parked" / "curated" / "v9" / "manifest.json").is_file()
    assert list((outside / "wip").iterdir()) == []


def _a_pair_id(store: Store) -> str:
    con = catalog.connect(store)
    try:
        return con.sql("SELECT min(id) FROM pairs").fetchall()[0][0]
    finally:
        con.close()


def _hh_duplicates(store: Store) -> int:
    con = catalog.connect(store)
    try:
        return con.sql("SELECT count(*) FROM duplicates WHERE kind = 'pair'").fetchall()[0][0]
    finally:
        con.close()


# ------------------------------------------------------------ ingest --source
def test_ingest_refuses_hostile_source_names(tmp_path, inputs):
    root = tmp_path / "s"
    for name in HOSTILE_NAMES:
        res = runner.invoke(
            app, ["ingest", str(inputs["pairs_small"]), "--store", str(root), "--source", name]
        )
        assert res.exit_code == 1 and "invalid source name" in one_line(res.output), (name, res.output)
    assert not list(root.glob("ingest/*"))


def test_sources_named_after_odd_file_names_are_valid_names(tmp_path, inputs):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in (
        "donn\u00e9es.jsonl",
        ".hidden.jsonl",
        "-dash.jsonl",
        "a..b.jsonl",
        "..jsonl",
        "sp ace.jsonl",
    ):
        shutil.copy(inputs["pairs_small"], folder / name)
    files = [str(f) for f in sorted(folder.iterdir())]
    res = runner.invoke(app, ["ingest", *files, "--store", str(tmp_path / "s"), "--no-near-dedup"])
    assert res.exit_code == 0, res.output
    units = sorted(p.name for p in (tmp_path / "s" / "ingest").iterdir())
    assert len(units) == 6
    for unit in units:
        safe_name(unit)


# ------------------------------------------------------------- report --out
def test_report_never_writes_over_the_store(store, tmp_path):
    manifest = store.root / "curated" / "v1" / "manifest.json"
    before = tree_digest(store.root)
    link = tmp_path / "link"
    os.symlink(store.root / "curated" / "v1", link)
    inside = [
        store.root / "catalog.duckdb",
        manifest,
        store.root / "ingest" / "x.html",
        store.root / "report.html",
        store.root / "reports" / ".." / "catalog.duckdb",
        store.root / "reports" / "sub" / "r.html",
        store.root / "reports" / "bad name.html",
        link / "manifest.json",
    ]
    for out in inside:
        res = runner.invoke(app, ["report", "--store", str(store.root), "--out", str(out)])
        assert (
            res.exit_code == 1
            and "inside the store" in one_line(res.output)
            or "invalid name" in one_line(res.output)
        ), (out, res.output)
    res = runner.invoke(app, ["report", "--store", str(store.root), "--out", str(tmp_path)])
    assert res.exit_code == 1 and "is a folder" in res.output
    assert tree_digest(store.root) == before
    res = runner.invoke(
        app, ["report", "--store", str(store.root), "--out", str(store.root / "reports" / "r.html")]
    )
    assert res.exit_code == 0, res.output
    assert (store.root / "reports" / "r.html").stat().st_size > 1000


def test_the_build_flows_report_out_is_held_to_the_same_rule(store, tmp_path):
    """Round three: the build flow's ``report_out`` (a Prefect deployment parameter) reached
    render_report unchecked, so ``report_out=<store>/catalog.duckdb`` replaced the catalog with the HTML
    page. The rule is now checked in render_report itself, for every caller."""
    from flows import tasks

    before = tree_digest(store.root)
    for out in (
        store.root / "catalog.duckdb",
        store.root / "curated" / "v1" / "manifest.json",
        store.root / "reports" / ".." / "ingest" / "r.html",
    ):
        with pytest.raises(StoreError, match="inside the store"):
            tasks.report.fn(str(store.root), "v1", str(out))
    assert tree_digest(store.root) == before
    assert tasks.report.fn(str(store.root), "v1", str(tmp_path / "r.html"))["report"] == str(
        tmp_path / "r.html"
    )


def test_sql_out_never_writes_over_the_store(store, tmp_path):
    """The same rule for `curate sql --out`: `--out <unit>/pair.parquet` emptied a unit."""
    unit = next((store.root / "ingest").glob("hh-*"))
    before = tree_digest(store.root)
    for out in (
        unit / "pair.parquet",
        store.root / "catalog.duckdb",
        store.root / "curated" / "v1" / "x.csv",
    ):
        res = runner.invoke(app, ["sql", "SELECT 1 AS x", "--store", str(store.root), "--out", str(out)])
        assert res.exit_code == 1 and isinstance(res.exception, StoreError), (out, res.output)
        assert "inside the store" in str(res.exception)
    assert tree_digest(store.root) == before
    res = runner.invoke(
        app, ["sql", "SELECT 1 AS x", "--store", str(store.root), "--out", str(tmp_path / "x.csv")]
    )
    assert res.exit_code == 0 and (tmp_path / "x.csv").read_text().splitlines() == ['"x"', "1"]


def test_sql_out_that_cannot_be_written_is_one_line_and_leaves_no_part(store, tmp_path, monkeypatch):
    """Round three: `--out` into a folder that does not exist (or under /proc) was a FileNotFoundError
    traceback, and the file was written in place, so a failure half-way left a partial file under the
    name; `--limit -1` printed no row and "2 more rows" for a 1-row result."""
    import pyarrow.csv as pacsv

    for out in (tmp_path / "no-such-folder" / "x.csv", Path("/proc/self/x.parquet")):
        res = runner.invoke(app, ["sql", "SELECT 1 AS x", "--store", str(store.root), "--out", str(out)])
        assert res.exit_code == 1 and res.output.startswith("error: --out"), (out, res.output)
        assert "cannot write it" in res.output and not isinstance(res.exception, OSError)
    (tmp_path / "out").mkdir()
    good = tmp_path / "out" / "x.csv"
    good.write_text("the previous result\n")

    def half_then_full_disk(table, path, *a, **k):
        Path(path).write_text('"x"\n')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pacsv, "write_csv", half_then_full_disk)
    res = runner.invoke(app, ["sql", "SELECT 1 AS x", "--store", str(store.root), "--out", str(good)])
    assert res.exit_code == 1 and "No space left on device" in res.output, res.output
    assert good.read_text() == "the previous result\n" and sorted(p.name for p in good.parent.iterdir()) == [
        "x.csv"
    ]
    res = runner.invoke(app, ["sql", "SELECT 1 AS x", "--store", str(store.root), "--limit", "-1"])
    assert res.exit_code == 2 and "--limit" in res.output, res.output


# ------------------------------------------------------------- store roots
@pytest.mark.parametrize("folder", list(ODD_ROOTS), ids=lambda f: repr(f))
def test_store_roots_with_odd_characters_work_and_never_read_a_sibling(tmp_path, inputs, folder):
    """A store at `a[1]` read the store `a1` (DuckDB globbed the root); `q?x` and `b\\c` stores were
    unreadable after the first unit committed (the catalog could not be written)."""
    sibling = ODD_ROOTS[folder]
    if sibling:
        res = runner.invoke(app, ["ingest", str(inputs["pairs"]), "--store", str(tmp_path / sibling)])
        assert res.exit_code == 0, res.output
    root = tmp_path / folder
    res = runner.invoke(app, ["ingest", str(inputs["sft"]), str(inputs["pairs_small"]), "--store", str(root)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    res = runner.invoke(
        app,
        [
            "sql",
            "SELECT (SELECT count(*) FROM sft) AS s, (SELECT count(*) FROM pairs) AS p",
            "--store",
            str(root),
        ],
    )
    assert res.exit_code == 0, res.output
    assert [c.strip() for c in res.output.splitlines()[-2].split("│") if c.strip()] == ["40", "7"]
    # DuckDB itself cannot open a database at a path holding '?' or '\\' (see docs/reliability.md)
    con = (
        duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
        if not {"?", "\\"} & set(folder)
        else None
    )
    if con is not None:
        try:
            assert con.sql("SELECT count(*) FROM pairs").fetchall()[0][0] == 7
        finally:
            con.close()
    result = build(Store(root), "default", "v1")
    assert result.path == root / "curated" / "v1"
    st_ = Store(root)
    con = catalog.connect(st_)
    try:
        assert con.sql("SELECT count(*) FROM curated_accounting WHERE kind = 'pair'").fetchall()[0][0] == 7
    finally:
        con.close()


def test_a_root_duckdb_cannot_name_is_refused_before_anything_is_written(tmp_path, inputs):
    root = tmp_path / "b\\c[1]"
    res = subprocess.run(
        [sys.executable, "-m", "curation.cli", "ingest", str(inputs["pairs_small"]), "--store", str(root)],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 1 and "DuckDB cannot read files" in one_line(res.stderr), res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 3
    assert not root.exists()


@pytest.mark.parametrize("bad", ["a\x00b", "x" * 5000])
def test_impossible_store_paths_give_a_clear_error(tmp_path, bad):
    with pytest.raises(StoreError):
        Store(tmp_path / bad)


def test_duckdb_path_names_exactly_one_file(tmp_path):
    import pyarrow.parquet as pq

    from curation.core.names import duckdb_path

    for name in ("a[1]", "a1", "q?x", "qax", "s*t", "sxt", "br]k"):
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"d": [name]}), tmp_path / name / "x.parquet")
    con = duckdb.connect()
    for name in ("a[1]", "q?x", "s*t", "br]k"):
        path = duckdb_path(tmp_path / name / "x.parquet").replace("'", "''")
        assert con.sql(f"SELECT d FROM read_parquet('{path}')").fetchall() == [(name,)]


# ------------------------------------------------------------- input files
def test_input_files_with_glob_characters_are_those_files(tmp_path, inputs):
    """`data[1].jsonl` was read as a glob: "no file matches", or `data1.jsonl` ingested instead."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, decoy in ODD_FILES.items():
        shutil.copy(inputs["pairs_small"], folder / name)
        shutil.copy(inputs["sft"], folder / decoy)
        assert expand_paths([str(folder / name)]) == [folder / name]
    # a pattern that names no file is still a pattern
    assert len(expand_paths([str(folder / "*.jsonl")])) == 6
    with pytest.raises(SourceError, match="no file matches"):
        expand_paths([str(folder / "nothing*.jsonl")])
    res = runner.invoke(app, ["ingest", str(folder / "data[1].jsonl"), "--store", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    con = catalog.connect(Store(tmp_path / "s"))
    try:
        assert con.sql("SELECT count(*) FROM pairs").fetchall()[0][0] == 7
        assert con.sql("SELECT count(*) FROM sft").fetchall()[0][0] == 0
        (source_file,) = con.sql("SELECT DISTINCT source_file FROM ingest_runs").fetchall()[0]
    finally:
        con.close()
    assert source_file.endswith("data[1].jsonl")
