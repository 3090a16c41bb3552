"""What every `curate` command shares: the one ``--store`` option, the consoles, and printing data as data.

Data on the terminal is printed as data: never read as rich markup, never sent as control codes. Rich
reads ``[...]`` in any string it prints as markup, so a record holding Llama-2 chat text (``[INST] ...
[/INST]``) crashed `curate sql` with a MarkupError, and ``[red]`` in a file name would restyle the line.
Terminal escape sequences in data (ESC, OSC, bidi overrides) could rewrite what the user sees. Every value
that did not come from our own source code goes through ``text`` (a rich ``Text``, printed literally) or,
inside one of our own markup literals, through ``esc``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from curation.core.store import Store

STORE_HELP = "Store folder (Parquet files + catalog.duckdb). Default: $CURATE_STORE or ./store."

#: The one ``--store`` option of every command: None when not given, then $CURATE_STORE, then ./store.
StoreOpt = typer.Option(None, "--store", "-s", help=STORE_HELP, show_default=False)

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def default_store() -> str:
    return os.environ.get("CURATE_STORE") or "store"


def open_store(path: str | None, create: bool = False) -> Store:
    return Store(path or default_store(), create=create)


# ------------------------------------------------------------ data as data
#: C0 and C1 control characters (but tab and newline), DEL, and the Unicode bidi controls that can
#: reorder a line on screen: each shown as a visible escape, as Python's repr shows it.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROLS |= {
    c: f"\\u{c:04x}" for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def visible(value: object) -> str:
    """``str(value)`` with control characters as visible escapes (``\\x1b``)."""
    return str(value).translate(_CONTROLS)


def text(value: object, style: str = "") -> Text:
    """``value`` as rich Text: printed as it is, whatever brackets it holds."""
    return Text(visible(value), style=style)


def esc(value: object) -> str:
    """``value`` for use inside one of our own markup strings: ``f"[dim]{esc(path)}[/]"``."""
    return escape(visible(value))


# ------------------------------------------------------------------ output
def fail(message: str, code: int = 1) -> None:
    """Print one error (its text as data: no markup, no control codes, one line however long) and exit."""
    print_error(message)
    raise typer.Exit(code)


def print_error(message: object) -> None:
    err.print(Text.assemble(("error:", "bold red"), " ", text(message)), soft_wrap=True)


def print_table(table, limit: int | None = 50, title: str | None = None) -> None:
    """Pretty-print an Arrow table (first ``limit`` rows); names and values are printed as data."""
    t = Table(title=text(title) if title is not None else None, show_lines=False)
    for name in table.column_names:
        t.add_column(text(name), overflow="fold", max_width=60)
    rows = table.slice(0, limit).to_pylist() if limit else table.to_pylist()
    for row in rows:
        t.add_row(*[_cell(v) for v in row.values()])
    console.print(t)
    if limit and table.num_rows > limit:
        console.print(f"[dim]{table.num_rows - limit} more rows (use --limit 0 or --out FILE)[/]")


def _cell(v) -> Text:
    if v is None:
        return text("null", "dim")
    if isinstance(v, float):
        return text(f"{v:.4g}")
    s = str(v)
    return text(s if len(s) <= 300 else s[:300] + "…")


def parse_pairs(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            fail(f"{option} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def write_table(table, out: Path) -> None:
    """Write an Arrow table as .parquet, .csv or .json (JSON lines) by the file's extension: into a
    temporary file beside ``out``, renamed over it when complete (never a half-written file under the
    name); a path that cannot be written is one error line."""
    import uuid

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv", ".json", ".jsonl"):
        fail(f"--out {out}: unknown extension; use .csv, .parquet or .json")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        if suffix == ".parquet":
            pq.write_table(table, tmp)
        elif suffix == ".csv":
            pacsv.write_csv(table, tmp)
        else:
            import orjson

            with open(tmp, "wb") as fh:
                for row in table.to_pylist():
                    fh.write(orjson.dumps(row, default=str) + b"\n")
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        fail(f"--out {out}: cannot write it ({exc.strerror or exc})")
