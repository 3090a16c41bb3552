"""The errors of the store layer: each one names what failed and what the user can do."""

from __future__ import annotations

import errno


class StoreError(RuntimeError):
    """A store operation failed in a way the user can act on."""


class StoreLocked(StoreError):
    """Another process holds the writer lock."""


def io_error(
    exc: OSError, doing: str, done: str = "nothing was committed, the store is unchanged"
) -> StoreError:
    """A StoreError in one line: what failed, what was left (``done``) and what the user can do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"disk full while {doing}; {done}. Free some space and run the command again: it resumes."
        )
    if exc.errno == errno.EROFS:
        return StoreError(
            f"read-only file system while {doing}; {done}. "
            "Use a writable store folder (--store) or remount it read-write, and run the command again."
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(f"permission denied {doing}: {exc.strerror}; {done}.")
    return StoreError(f"I/O error {doing}: {exc.strerror or exc}; {done}.")
