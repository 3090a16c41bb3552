"""Read-only SQL over a store: only SELECT-like statements, and files outside the store unreachable.

Two locks keep a query harmless: the statement types are checked before
anything runs (DROP, COPY, ATTACH, INSTALL, SET ... are refused by name), and
the connection is sandboxed with DuckDB's own settings (external access off,
only the store folder allowed, configuration locked), so even a SELECT cannot
read or write a file elsewhere.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from curation.store import Store, duckdb_dirs, sql_string

ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class SQLRefused(ValueError):
    """A statement that `curate sql` will not run."""


def readonly_connection(store: Store) -> duckdb.DuckDBPyConnection:
    con = store.connect()
    dirs = ", ".join(sql_string(d) for d in duckdb_dirs(store.root.resolve()))
    con.execute(f"SET allowed_directories=[{dirs}]")
    con.execute("SET enable_external_access=false")
    con.execute("SET autoinstall_known_extensions=false")
    con.execute("SET autoload_known_extensions=false")
    con.execute("SET lock_configuration=true")
    return con


def check_readonly(sql: str) -> None:
    try:
        statements = duckdb.connect(":memory:").extract_statements(sql)
    except duckdb.Error as exc:
        raise SQLRefused(f"cannot parse the query: {exc}") from exc
    if not statements:
        raise SQLRefused("empty query")
    for st in statements:
        if st.type not in ALLOWED:
            kind = st.type.name if hasattr(st.type, "name") else str(st.type)
            raise SQLRefused(
                f"`curate sql` is read-only: {kind} statements are refused (only SELECT, WITH ... SELECT, EXPLAIN)"
            )


def query(store: Store, sql: str) -> pa.Table:
    """Run a read-only query; the last statement's result as an Arrow table."""
    check_readonly(sql)
    con = readonly_connection(store)
    try:
        statements = con.extract_statements(sql)
        for st in statements[:-1]:
            con.execute(st)
        return con.sql(statements[-1].query).to_arrow_table()
    finally:
        con.close()
