"""Names and paths: the one check of every name a user gives for a place in the store, and how a path
is spelled for DuckDB so that it is that path, never a pattern."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from curation.core.errors import StoreError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")


def safe_name(name: str, what: str = "name") -> str:
    """The one check of every name a user gives for a place in the store (build, source, report file) and
    of every path component the code joins under the root: one plain name of letters, digits and
    ``. _ - =``, starting with a letter or digit, without '..', at most 200 characters. So ".", "",
    "a/b", "a\\b", a trailing newline, NUL, look-alike letters and globs are all refused."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise StoreError(
            f"invalid {what} {name!r}: use one plain name of letters, digits, '.', '_', '-' or '=', "
            "starting with a letter or digit (no path separators, no '..', at most 200 characters)"
        )
    return name


def plain_name(text: str, default: str = "input") -> str:
    """A name that passes ``safe_name``, made from any text (a file's stem): ``text`` itself when it
    passes, else with every other character (and each '.' of a '..') as '_' and what leads it up to the
    first letter or digit left out (``default`` when nothing is left)."""
    with contextlib.suppress(StoreError):
        return safe_name(text)
    name = re.sub(r"[^A-Za-z0-9._=-]", "_", text).replace("..", "__").lstrip("._=-")[:200]
    return safe_name(name or default, "derived name")


#: Characters DuckDB reads as a glob in any file path it is given (measured with duckdb 2.0.1).
_DUCKDB_GLOB = re.compile(r"[*?\[]")


def duckdb_path(path: str | os.PathLike[str]) -> str:
    """``path`` as DuckDB must be given it to open exactly that file, never a glob.

    DuckDB globs every path holding ``*``, ``?`` or ``[`` (a store at ``a[1]`` read the store ``a1``);
    each is put in brackets (``[*]``, ``[?]``, ``[[]``), which its glob matches literally. A path that
    also holds a backslash cannot be named at all (DuckDB's glob splits paths at backslashes), so
    ``Store`` refuses such roots."""
    return _DUCKDB_GLOB.sub(lambda m: f"[{m.group()}]", os.fspath(path))


def sql_string(text: str) -> str:
    """A SQL string literal holding ``text``."""
    return "'" + text.replace("'", "''") + "'"


def sql_files(files: list[Path]) -> str:
    """A DuckDB list literal naming exactly these files (for ``read_parquet``)."""
    return "[" + ", ".join(sql_string(duckdb_path(f)) for f in files) + "]"


def duckdb_dirs(folder: Path) -> list[str]:
    """``allowed_directories`` entries that let a sandboxed DuckDB read the files under ``folder``: the
    folder as it is and, when it holds glob characters, as ``duckdb_path`` writes it (DuckDB checks the
    pattern it is given against the list before it globs)."""
    real = f"{folder}/"
    return list(dict.fromkeys([real, duckdb_path(real)]))


def check_root(root: Path) -> None:
    """Refuse a store folder whose files DuckDB cannot name (see ``duckdb_path``), before anything is written."""
    text = str(root)
    if "\\" in text and _DUCKDB_GLOB.search(text):
        raise StoreError(
            f"store folder {text!r}: DuckDB cannot read files under a path that holds a backslash together "
            "with '*', '?' or '['; use another folder name"
        )
