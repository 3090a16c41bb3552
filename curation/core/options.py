"""Config fields with their help text, TRL's config style: the one place scorer and trainer configs get it.

The help becomes ``metadata["help"]``: `curate score --help`, `curate train --help` and the docs read it.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str, choices: list[str] | None = None, **kwargs: Any) -> Any:  # noqa: A002
    """A dataclass field with ``default`` and one line of ``help`` (cite the default's source in it);
    ``choices``: the values the command line accepts."""
    metadata = {"help": help} | ({"choices": choices} if choices else {})
    return field(default=default, metadata=metadata, **kwargs)
