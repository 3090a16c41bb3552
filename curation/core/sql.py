"""The one read-only SQL sandbox: all user SQL is checked here and runs on a connection opened here.

User SQL reaches the store in four places: `curate sql`, `curate score --where`, the clauses of a policy
file (filters, weight, label_smoothing) and the uncertainty scorer's ``column`` expression. All of them
pass two independent locks:

1. The text (``check_query``, ``check_expression``), read by DuckDB's own parser, never by keyword
   matching: exactly one statement; a SELECT (also WITH, FROM-first, VALUES, DESCRIBE, SUMMARIZE, SHOW)
   or ``EXPLAIN [ANALYZE]`` of one; every table function it calls is on ``TABLE_FUNCTIONS`` (no file
   readers: the store is read through its views); every table it names is a plain identifier (so no
   file name becomes a replacement scan). An expression is one expression (``duckdb.SQLExpression``),
   holds no comment, and put in a SELECT passes the same check.
2. The connection (``connect``, ``sandbox``): DuckDB's own sandbox. External access off with only the
   store folder reachable (DuckDB resolves links, so a link out of the store is refused); spill files in
   a fresh folder under the store's ``.sql-tmp/`` (never DuckDB's default ``./.tmp``, which it would
   allow whatever it links to), or no spilling where the store is read-only; no extension installed or
   loaded; no Python variables read as tables; no progress bar printed; then the configuration locked, so
   no statement can undo any of it or turn on a profiler or logger that writes files.

What the second lock cannot do: DuckDB allows a directory for reading and writing alike, so inside the
store it is the first lock that keeps a statement from writing. docs/reliability.md ("Round two: user
SQL") lists every case the tests try.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

import duckdb
import pyarrow as pa

from curation.core.errors import StoreError
from curation.core.names import duckdb_dirs

#: Table functions user SQL may call: generators, JSON and catalog introspection. None reads a file.
TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "repeat_row",
        "json_each",
        "json_tree",
        "duckdb_columns",
        "duckdb_constraints",
        "duckdb_databases",
        "duckdb_functions",
        "duckdb_keywords",
        "duckdb_schemas",
        "duckdb_tables",
        "duckdb_types",
        "duckdb_views",
        "pragma_version",
    }
)
#: Folder of the store that holds DuckDB's spill files (one fresh subfolder per connection).
SPILL_DIR = ".sql-tmp"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXPLAIN_OPTIONS = ("analyze", "analyse")


class SQLError(ValueError):
    """User SQL that cannot run; the message names the fragment and the reason."""


class SQLRefused(SQLError):
    """User SQL that the sandbox will not run (a write, a file, several statements ...)."""

    def __init__(self, reason: str, what: str | None = None, text: str | None = None) -> None:
        self.reason = reason
        super().__init__(f"{what} {_shorten(text)!r}: {reason}" if what else reason)


# ----------------------------------------------------------------- the text
def check_query(sql: str) -> str:
    """The statement to run if ``sql`` is one read-only SELECT (or EXPLAIN of one); else SQLRefused."""
    stmt = _one_statement(sql)
    if _type(stmt) == duckdb.StatementType.EXPLAIN:
        prefix, inner = _unwrap_explain(stmt.query)
        inner_stmt = _one_statement(inner)
        if _type(inner_stmt) != duckdb.StatementType.SELECT:
            kind = _kind(inner_stmt)
            raise SQLRefused(f"read-only SQL: EXPLAIN may only wrap a SELECT, not {_a(kind)} statement")
        _check_select(inner_stmt.query)
        return f"{prefix} {inner_stmt.query}"
    # DuckDB runs a PIVOT without IN (...) as several statements
    if _type(stmt) == duckdb.StatementType.MULTI:
        raise SQLRefused(
            "read-only SQL: this runs as several statements (a PIVOT whose ON columns have no IN list "
            "first creates a type); list the values: PIVOT t ON col IN ('a', 'b') USING ..."
        )
    if _type(stmt) != duckdb.StatementType.SELECT:
        raise SQLRefused(
            "read-only SQL: only a SELECT (WITH, FROM, VALUES, DESCRIBE, SUMMARIZE, SHOW) or "
            f"EXPLAIN [ANALYZE] of one may run, not {_a(_kind(stmt))} statement"
        )
    _check_select(stmt.query)
    return stmt.query


def check_expression(expr: str, what: str = "expression") -> str:
    """``expr`` if it is exactly one SQL expression that passes ``check_query`` in a SELECT; else SQLRefused.

    Callers put the returned text in parentheses inside their own statement. ``what`` names the option or
    policy clause in the message."""
    if not isinstance(expr, str):
        raise SQLRefused(f"expected SQL text, got {type(expr).__name__}", what, repr(expr))
    if not expr.strip():
        raise SQLRefused("an empty expression", what, expr)
    try:
        duckdb.SQLExpression(expr)
    except (duckdb.Error, ValueError) as exc:
        raise SQLRefused(f"not one SQL expression: {_first_line(exc)}", what, expr) from None
    if any(kind == duckdb.token_type.comment for _, kind in _tokens(expr)):
        raise SQLRefused("comments are not allowed in an expression (remove the comment)", what, expr)
    try:
        check_query(f"SELECT ({expr}) AS x")
    except SQLRefused as exc:
        raise SQLRefused(exc.reason, what, expr) from None
    return expr


def _one_statement(sql: str) -> duckdb.Statement:
    if not isinstance(sql, str):
        raise SQLRefused(f"expected SQL text, got {type(sql).__name__}")
    try:
        with _PARSER_LOCK:
            statements = _parser()[0].extract_statements(sql)
    except (duckdb.Error, ValueError) as exc:  # ValueError: a statement type this Python package cannot name
        raise SQLRefused(f"cannot parse the query: {_first_line(exc)}") from None
    if not statements:
        raise SQLRefused("empty query: give one SELECT statement")
    if len(statements) > 1:
        raise SQLRefused(
            f"read-only SQL runs one statement at a time; this text holds {len(statements)} "
            f"({', '.join(_kind(s) for s in statements)}): run them one by one"
        )
    return statements[0]


def _unwrap_explain(text: str) -> tuple[str, str]:
    """('EXPLAIN' or 'EXPLAIN ANALYZE', the text it wraps), read from DuckDB's tokens (comments skipped)."""
    toks = _tokens(text)
    words = [
        (off, text[off : toks[i + 1][0] if i + 1 < len(toks) else len(text)].strip())
        for i, (off, kind) in enumerate(toks)
        if kind != duckdb.token_type.comment
    ]
    if not words or words[0][1].lower() != "explain":
        raise SQLRefused("read-only SQL: cannot read this EXPLAIN statement")
    prefix, rest = "EXPLAIN", words[1:]
    if rest and rest[0][1].lower() in _EXPLAIN_OPTIONS:
        prefix, rest = "EXPLAIN ANALYZE", rest[1:]
    if not rest:
        raise SQLRefused("read-only SQL: EXPLAIN of nothing")
    return prefix, text[rest[0][0] :]


def _check_select(sql: str) -> None:
    """Walk DuckDB's parse tree of one SELECT: table functions on the allow-list, tables plain identifiers."""
    with _PARSER_LOCK:
        con, table_functions = _parser()
        (serialized,) = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    try:
        tree = json.loads(serialized)
    except RecursionError:  # Python's JSON reader recurses once per level of DuckDB's parse tree
        raise SQLRefused(
            "read-only SQL: the query nests too deeply to be checked (hundreds of nested calls, "
            "parentheses or operators); write it flatter"
        ) from None
    if tree.get("error"):
        raise SQLRefused(
            f"read-only SQL: only a plain SELECT can run ({tree.get('error_message', 'unreadable')})"
        )
    for node in _nodes(tree):
        if node.get("type") == "TABLE_FUNCTION":
            fn = node.get("function")
            name = fn.get("function_name") if isinstance(fn, dict) else None
            if not isinstance(name, str) or name.lower() not in TABLE_FUNCTIONS:
                raise SQLRefused(_function_refusal(name))
        elif node.get("class") == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in table_functions and name not in TABLE_FUNCTIONS:
                raise SQLRefused(_function_refusal(name))
        if node.get("type") == "BASE_TABLE":
            for key in ("table_name", "schema_name", "catalog_name"):
                part = node.get(key) or ""
                if (key == "table_name" and not part) or (part and not _IDENTIFIER.match(part)):
                    raise SQLRefused(
                        "read-only SQL reads the store's views by name (sft, pairs, rankings, quarantine, "
                        f"...); {part!r} is not a plain name (files are not read directly)"
                    )


def _function_refusal(name: object) -> str:
    return (
        f"read-only SQL: the table function {name!r} is not allowed (files are read through the store's "
        f"views: sft, pairs, rankings, quarantine, ...); allowed: {', '.join(sorted(TABLE_FUNCTIONS))}"
    )


def _nodes(tree: object):
    """Every JSON object in the tree, depth first."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _tokens(text: str) -> list[tuple[int, duckdb.token_type]]:
    return [(int(off), kind) for off, kind in duckdb.tokenize(text)]


def _type(stmt: duckdb.Statement) -> duckdb.StatementType | None:
    """The statement's type; None for a type this Python package cannot name (e.g. UPDATE EXTENSIONS)."""
    try:
        return stmt.type
    except ValueError:
        return None


def _kind(stmt: duckdb.Statement) -> str:
    kind = _type(stmt)
    return "UNNAMED" if kind is None else getattr(kind, "name", str(kind))


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'AEIOU' else 'a'} {word}"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _shorten(text: str | None, n: int = 200) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n] + "…"


# One parser connection per process (a connection costs 30-70 ms); it parses, it never reads a file.
_PARSER: tuple[int, duckdb.DuckDBPyConnection, frozenset[str]] | None = None
_PARSER_LOCK = threading.RLock()


def _parser() -> tuple[duckdb.DuckDBPyConnection, frozenset[str]]:
    """The parser connection and the names that only name table functions (call under _PARSER_LOCK)."""
    global _PARSER
    if _PARSER is None or _PARSER[0] != os.getpid():  # never a connection from before a fork
        con = duckdb.connect(":memory:")
        con.execute("SET temp_directory = ''")
        for setting in _LOCKS:
            con.execute(f"SET {setting}")
        names = con.sql(  # table functions that are not also a scalar or aggregate (histogram is both)
            "SELECT lower(function_name) FROM duckdb_functions() GROUP BY 1 "
            "HAVING bool_and(function_type IN ('table', 'table_macro'))"
        ).fetchall()
        _PARSER = (os.getpid(), con, frozenset(n for (n,) in names))
    return _PARSER[1], _PARSER[2]


# ----------------------------------------------------------- the connection
#: Applied in this order after the allowed folder and the spill folder are set (order matters to DuckDB).
_LOCKS = (
    "autoinstall_known_extensions = false",
    "autoload_known_extensions = false",
    "allow_community_extensions = false",
    "python_enable_replacements = false",
    "enable_progress_bar = false",
    "enable_external_access = false",
    "lock_configuration = true",
)


def sandbox(con: duckdb.DuckDBPyConnection, root: Path) -> duckdb.DuckDBPyConnection:
    """Lock a fresh connection to the store at ``root`` (see the module doc); returns ``con``."""
    real = Path(root).resolve()
    dirs = ", ".join(_literal(d) for d in duckdb_dirs(real))  # escaped too where the path holds [ * ?
    con.execute(f"SET allowed_directories = [{dirs}]")
    con.execute(f"SET temp_directory = {_literal(spill_folder(real))}")
    for setting in _LOCKS:
        con.execute(f"SET {setting}")
    return con


def connect(root: Path, views: Mapping[str, str]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection sandboxed to the store folder ``root``, with ``views`` (name -> SQL)
    defined in order; never locks the store. ``curation.core.store.Store.connect`` gives the base views,
    ``curation.catalog.connect`` every view."""
    con = duckdb.connect(":memory:")
    try:
        sandbox(con, root)
        for name, sql in views.items():
            try:
                con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {sql}')
            except duckdb.Error as exc:  # e.g. a file of the view that links out of the store
                raise StoreError(f"store {root}: view {name!r} cannot be read: {_first_line(exc)}") from exc
    except BaseException:
        con.close()
        raise
    return con


def spill_folder(real_root: Path) -> str:
    """A fresh folder for DuckDB's spill files inside ``<store>/.sql-tmp/`` (DuckDB creates it when it
    first spills and removes it on close); '' (no spilling) where the store is read-only.

    ``.sql-tmp`` must be a plain folder: DuckDB allows its temporary folder whatever that links to, so a
    link there would open the machine. Folders left by killed processes of this host are removed."""

    parent = real_root / SPILL_DIR
    try:
        parent.mkdir()
    except FileExistsError:
        pass
    except OSError:  # a read-only store or no permission: no spilling rather than spilling elsewhere
        return ""
    mode = os.lstat(parent).st_mode
    if not stat.S_ISDIR(mode):
        what = f"a link to {os.readlink(parent)}" if stat.S_ISLNK(mode) else "not a folder"
        raise StoreError(
            f"{parent} is {what}: DuckDB keeps its spill files there and would follow a link out of the "
            "store; remove it"
        )
    _remove_dead_spill_folders(parent)
    return str(parent / f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:12]}")


def _remove_dead_spill_folders(parent: Path) -> None:
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            owner, _, pid = entry.name.rpartition("_")[0].rpartition("_")
            if (
                owner == host
                and pid.isdigit()
                and not _alive(int(pid))
                and entry.is_dir(follow_symlinks=False)
            ):
                shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ------------------------------------------------------------------ running
def query(
    con: duckdb.DuckDBPyConnection, sql: str, what: str = "query", timeout: float | None = None
) -> pa.Table:
    """Run one checked read-only statement on a sandboxed connection (``connect``); its result as an
    Arrow table. ``what`` names where the SQL came from (e.g. ``--where 'x > 1'``) in the message of a
    failing query; a query still running after ``timeout`` seconds is interrupted (SQLError)."""
    text = check_query(sql)
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        con.interrupt()

    timer = threading.Timer(timeout, stop) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        return con.sql(text).to_arrow_table()
    except duckdb.InterruptException as exc:
        if fired.is_set():  # the time limit (else: Ctrl-C, which goes on as KeyboardInterrupt)
            raise SQLError(
                f"{what}: stopped after {timeout:g} s (the time limit); nothing was changed"
            ) from exc
        raise
    except duckdb.Error as exc:
        raise SQLError(f"{what}: {str(exc).strip()}") from exc
    finally:
        if timer:
            timer.cancel()
