"""What every scorer returns, and helpers they share."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from curation.scoring.cache import CacheStats


@dataclass
class ScoreSummary:
    """The outcome of one scorer run (printed by `curate score`, returned to flows)."""

    scorer: str
    key: str
    records: int
    cached: int = 0  # per-record values read from caches
    computed: int = 0  # per-record values computed in this run
    skipped: bool = False  # True when the result for exactly this data and these params already existed
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def add_stats(summary: ScoreSummary, stats: CacheStats) -> None:
    summary.cached += stats.cached
    summary.computed += stats.computed
