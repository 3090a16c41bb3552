"""The unit of per-record model work that can run in this process or on a Ray worker."""

from __future__ import annotations

import pyarrow as pa


class ChunkTask:
    """Per-record work that can run anywhere: picklable settings, ``setup()`` loads the model (once, lazily),
    ``__call__(items) -> table`` computes one chunk and touches no store."""

    def setup(self) -> None:
        """Load what ``__call__`` needs (a model); called once per process before the first chunk."""

    def __call__(self, items: list) -> pa.Table:
        raise NotImplementedError
