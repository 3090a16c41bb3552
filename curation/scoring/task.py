"""The unit of per-record model work that can run in this process or on a Ray worker."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


class ChunkTask:
    """Per-record work that can run anywhere: picklable settings, a model loaded once, lazily, in the process
    that computes (``load``; never pickled), and ``__call__(items) -> table`` that touches no store."""

    _model: Any = None

    def load(self) -> Any:
        """The model ``__call__`` needs (None when it needs none)."""
        return None

    def model(self) -> Any:
        """What ``load`` returned, loaded on the first call in this process."""
        if self._model is None:
            self._model = self.load()
        return self._model

    def setup(self) -> None:
        """Load the model before the first chunk (the runner and the Ray workers call it once)."""
        self.model()

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_model": None}  # a worker loads its own

    def __call__(self, items: list) -> pa.Table:
        raise NotImplementedError
