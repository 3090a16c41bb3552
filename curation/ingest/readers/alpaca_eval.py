"""AlpacaEval-style judgments: two outputs and a soft preference in [1, 2] (2 = output_2 better)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from curation.ingest.readers.base import Reader, Record, RowError, extra_meta, msg, text
from curation.ingest.readers.registry import register


@register(priority=100)
class AlpacaEvalReader(Reader):
    """A judgment becomes a pair whose ``strength`` is the judge's probability for the winner.

    preference p in [1, 2]: P(output_2 better) = p - 1. The winner is chosen and
    strength = max(P, 1 - P) in [0.5, 1]. An exact tie (p = 1.5) never becomes
    a pair: the row is quarantined with the reason "tie".
    """

    name = "alpaca_eval"
    kind = "pair"
    summary = "AlpacaEval annotations: {instruction, output_1, output_2, preference in [1,2]}"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return {"output_1", "output_2", "preference"} <= row.keys()

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        pref = row.get("preference")
        if isinstance(pref, bool) or not isinstance(pref, int | float) or math.isnan(pref):
            raise RowError("preference", f"expected a number in [1, 2], got {pref!r}")
        if not 1.0 <= pref <= 2.0:
            raise RowError("preference", f"{pref} is outside [1, 2]")
        p2 = float(pref) - 1.0
        if p2 == 0.5:
            raise RowError("preference", "tie (1.5): ties never become pairs")
        out1, out2 = text(row.get("output_1"), "output_1"), text(row.get("output_2"), "output_2")
        chosen, rejected, strength = (out2, out1, p2) if p2 > 0.5 else (out1, out2, 1.0 - p2)
        meta = extra_meta(row, {"instruction", "output_1", "output_2", "preference"})
        meta["preference"] = pref
        meta["winner"] = "output_2" if p2 > 0.5 else "output_1"
        return [
            {
                "prompt": [msg("user", text(row.get("instruction"), "instruction"))],
                "chosen": [msg("assistant", chosen)],
                "rejected": [msg("assistant", rejected)],
                "strength": strength,
                "meta": meta,
            }
        ]
