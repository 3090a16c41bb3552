"""Data on the terminal is printed as data: never read as rich markup, never sent as control codes.

Rich reads ``[...]`` in any string it prints as markup, so a record holding Llama-2 chat text
(``[INST] ... [/INST]``) crashed `curate sql` with a MarkupError, and ``[red]`` in a file name would
restyle the line. Terminal escape sequences in data (ESC, OSC, bidi overrides) could rewrite what the
user sees. Every value that did not come from our own source code goes through ``text`` (a rich
``Text``, printed literally) or, inside one of our own markup literals, through ``esc``.
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text

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
