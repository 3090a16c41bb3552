"""Great Expectations suites per kind, run on derived scalar columns of each batch.

GX has no polars engine and cannot look inside nested columns, so each batch
of canonical records becomes a pandas frame of derived scalars (turn counts,
role-order verdict, lengths, chosen == rejected, grades present) that the
suite checks. Failing rows come back with the name of the failed check, which
becomes the quarantine reason.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import re
import threading
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from curation.ingest.readers.base import PY_WHITESPACE
from schemas import ROLES, Kind

#: Default upper bound on a record's characters (prompt + longest response), about
#: 5k tokens: above every record of the real datasets in ../shared/data (max 15.6k),
#: below the runaway 26k-character reply in the OpenAI cookbook's bad-format example.
#: Configurable with --max-chars.
DEFAULT_MAX_CHARS = 20_000


@dataclass(frozen=True)
class Check:
    """One expectation: the derived column, its GX expectation and the quarantine reason."""

    column: str
    expectation: str
    kwargs: dict[str, Any]
    reason: str


def role_order_problem(messages: Sequence[dict[str, str]]) -> str:
    """'' if the role sequence makes sense, else what is wrong with it."""
    if not messages:
        return "no turns"
    roles = [m["role"] for m in messages]
    unknown = next((r for r in roles if r not in ROLES), None)
    if unknown is not None:  # readers map roles to these; a record built otherwise may not have
        return f"unknown role {unknown!r}"
    if "system" in roles[1:]:
        return "system turn after the start"
    body = roles[1:] if roles[0] == "system" else roles
    if not body or body[0] != "user":
        return "first turn after the system prompt is not a user turn"
    for prev, cur in zip(body, body[1:], strict=False):
        if cur == "tool" and prev not in ("assistant", "tool"):
            return "tool turn that does not follow an assistant call"
    return ""


def _min_turn(messages: Sequence[dict[str, str]]) -> int:
    return min((len(m["content"].strip()) for m in messages), default=0)


def _empty_at(**fields: Sequence[dict[str, str]]) -> str:
    """Location of the first empty turn, e.g. ``chosen[0].content``; '' if none."""
    for name, messages in fields.items():
        for i, m in enumerate(messages):
            if not m["content"].strip():
                return f"{name}[{i}].content"
    return ""


#: Characters that show nothing: "the same text" ignores them (a zero-width space is no preference).
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
_INVISIBLE = dict.fromkeys(map(ord, INVISIBLE))
_SPACES = re.compile(f"[{re.escape(PY_WHITESPACE)}]+")


def text_key(text: str) -> str:
    """``text`` as two responses are compared ("the same text"): zero-width characters dropped, each run of
    spaces one space, none around it, Unicode NFC (``e`` + combining accent is ``é``)."""
    return unicodedata.normalize("NFC", _SPACES.sub(" ", text.translate(_INVISIBLE)).strip(PY_WHITESPACE))


def messages_key(messages: Sequence[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    """Turns as compared for "the same response": each role with the ``text_key`` of its content."""
    return tuple((m["role"], text_key(m["content"])) for m in messages)


def candidates_agree(candidates: Sequence[Mapping[str, Any]]) -> bool:
    """False when two candidates of a ranking are the same text (``text_key``) with different grades: the
    ranking would put a response above itself. A reference answer is left out: it is graded above the
    others by design, and a correct model answer may copy it word for word (GSM8K)."""
    grade_of: dict[str, Any] = {}
    for c in candidates:
        if c.get("is_reference"):
            continue
        key = text_key(c["content"])
        if grade_of.setdefault(key, c.get("grade")) != c.get("grade"):
            return False
    return True


def _chars(messages: Sequence[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


def derive(kind: Kind, records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Scalar columns GX can check, one row per record."""
    rows = []
    for r in records:
        if kind == "sft":
            msgs = r["messages"]
            problem = role_order_problem(msgs) or (
                "" if msgs[-1]["role"] == "assistant" else "does not end with an assistant turn"
            )
            rows.append(
                {
                    "id": r.get("id", ""),
                    "min_turn_chars": _min_turn(msgs),
                    "role_order": problem or "ok",
                    "field": _empty_at(messages=msgs) or "messages",
                    "total_chars": _chars(msgs),
                    "n_turns": len(msgs),
                }
            )
        elif kind == "pair":
            p, c, j = r["prompt"], r["chosen"], r["rejected"]
            problem = role_order_problem(p) or (
                "" if p[-1]["role"] in ("user", "tool") else "prompt does not end with a user turn"
            )
            if not problem and any(m["role"] != "assistant" for m in c + j if m["role"] != "tool"):
                problem = "responses contain non-assistant turns"
            rows.append(
                {
                    "id": r.get("id", ""),
                    "min_turn_chars": min(_min_turn(p), _min_turn(c), _min_turn(j)),
                    "role_order": problem or "ok",
                    "total_chars": _chars(p) + max(_chars(c), _chars(j)),
                    "field": _empty_at(prompt=p, chosen=c, rejected=j) or "prompt,chosen,rejected",
                    "responses_differ": messages_key(c) != messages_key(j),
                }
            )
        else:
            p, cands = r["prompt"], r["candidates"]
            problem = role_order_problem(p) or (
                "" if p[-1]["role"] in ("user", "tool") else "prompt does not end with a user turn"
            )
            contents = [c["content"] for c in cands]
            rows.append(
                {
                    "id": r.get("id", ""),
                    "min_turn_chars": min(_min_turn(p), min((len(c.strip()) for c in contents), default=0)),
                    "role_order": problem or "ok",
                    "field": _empty_at(prompt=p) or "candidates",
                    "total_chars": _chars(p) + max((len(c) for c in contents), default=0),
                    "n_candidates": len(cands),
                    "grades_present": all(c.get("grade") is not None for c in cands),
                    "candidates_agree": candidates_agree(cands),
                }
            )
    return pd.DataFrame(rows)


def checks(kind: Kind, max_chars: int) -> list[Check]:
    common = [
        Check("min_turn_chars", "ExpectColumnValuesToBeBetween", {"min_value": 1}, "empty turn"),
        Check("role_order", "ExpectColumnValuesToBeInSet", {"value_set": ["ok"]}, "role order"),
        Check(
            "total_chars",
            "ExpectColumnValuesToBeBetween",
            {"min_value": 1, "max_value": max_chars},
            f"length out of bounds (1..{max_chars} characters)",
        ),
        Check("id", "ExpectColumnValuesToBeUnique", {}, "duplicate id inside the batch"),
    ]
    if kind == "pair":
        common.append(
            Check(  # compared by ``messages_key``: spaces, zero-width characters and Unicode forms aside
                "responses_differ", "ExpectColumnValuesToBeInSet", {"value_set": [True]}, "chosen == rejected"
            )
        )
    if kind == "ranking":
        common += [
            Check(
                "n_candidates", "ExpectColumnValuesToBeBetween", {"min_value": 2}, "fewer than 2 candidates"
            ),
            Check("grades_present", "ExpectColumnValuesToBeInSet", {"value_set": [True]}, "grades missing"),
            Check(
                "candidates_agree",
                "ExpectColumnValuesToBeInSet",
                {"value_set": [True]},
                "the same candidate text twice with different grades",
            ),
        ]
    return common


_gc_lock = threading.Lock()
_gc_pauses = 0  # callers inside _gc_paused
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while Great Expectations imports and builds its context.

    Both allocate hundreds of thousands of long-lived objects (pydantic models, deep copies), so the
    collector runs again and again over a growing heap: a sixth of their 4 s here. Nested and concurrent
    uses are counted; the collector is turned back on (if it was on) when the last one leaves.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _import_gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with _gc_paused():
        import great_expectations as gx

    return gx


def prefetch_gx() -> threading.Thread:
    """Import Great Expectations in a background thread (about 2.5 s of imports), so that it overlaps with
    the reading, hashing and parsing that come before the first batch is validated."""
    thread = threading.Thread(target=_import_gx, name="import-great-expectations", daemon=True)
    thread.start()
    return thread


class Validator:
    """Runs a kind's suite over batches: one ephemeral GX context, suite and batch definition, built
    once and run on each batch's frame (building them costs more than validating 50k rows).

    Each batch goes through GX's own validator (what ``ValidationDefinition.run`` does), without
    ``run``'s copy of the result into the context's results store: that store is a dict in memory, so a
    long ingest would keep every batch's result, failing row indices included (memory growing with the
    input), and serialising them cost 10-20 % of each validation.
    """

    def __init__(self, kind: Kind, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        with _gc_paused():
            self._build(kind, max_chars)

    def _build(self, kind: Kind, max_chars: int) -> None:
        gx = _import_gx()
        from great_expectations.data_context.types.base import ProgressBarsConfig

        # GX logs an INFO line per ephemeral context ("Created temporary directory ..."); set after the
        # import, which configures its own loggers.
        for name in ("great_expectations", "great_expectations.data_context.types.base"):
            logging.getLogger(name).setLevel(logging.ERROR)

        self.kind = kind
        self.max_chars = max_chars
        self.checks = checks(kind, max_chars)
        with contextlib.redirect_stdout(io.StringIO()):
            self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self.context.data_sources.add_pandas("batches").add_dataframe_asset(name="records")
        suite = self.context.suites.add(gx.ExpectationSuite(name=kind))
        for chk in self.checks:
            suite.add_expectation(getattr(gx.expectations, chk.expectation)(column=chk.column, **chk.kwargs))
        self.suite = suite
        self.batches = asset.add_batch_definition_whole_dataframe("all")

    def failing_checks(self, frame: pd.DataFrame) -> dict[int, Check]:
        """Position of each failing row of a derived frame -> the first check it fails."""
        if frame.empty:
            return {}
        frame = frame.reset_index(drop=True).reset_index(names="_row")
        from great_expectations.validator.v1_validator import Validator as SuiteValidator

        result = SuiteValidator(
            batch_definition=self.batches,
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["_row"]},
        ).validate_expectation_suite(self.suite)
        out: dict[int, Check] = {}
        by_column = {c.column: c for c in self.checks}
        for res in result.results:  # in suite order: the first failing check wins
            chk = by_column[res.expectation_config.kwargs["column"]]
            for item in res.result.get("unexpected_index_list") or []:
                out.setdefault(int(item["_row"]), chk)
        return out

    def failures(self, records: Sequence[dict[str, Any]]) -> dict[int, tuple[str, str]]:
        """Index of each failing record -> (field, reason). The first failing check wins."""
        if not records:
            return {}
        frame = derive(self.kind, records)
        return {i: explain(chk, frame.iloc[i]) for i, chk in self.failing_checks(frame).items()}


def explain(chk: Check, derived: Mapping[str, Any]) -> tuple[str, str]:
    """(field, quarantine reason) of a failed check, from the record's derived row (``derive``)."""
    detail = derived[chk.column]
    if chk.column == "role_order":
        return str(derived["field"]), f"role order: {detail}"
    if chk.column == "total_chars":
        return str(derived["field"]), f"{chk.reason}: {detail} characters"
    return str(derived["field"]), chk.reason
