"""Generic column mapping for any other layout: ``--map prompt=question --map response=answer``.

Targets per kind (paths may be nested: ``instances[0].output`` or ``meta.text``):

sft      prompt, response, [input], [system]  — or messages (+ role_key/content_key)
pair     prompt, chosen, rejected, [input], [system], [strength]
         or prompt, response_a, response_b, label with ``label_values`` saying which
         raw label values mean "a", "b" or "tie" (ties never become pairs)
ranking  prompt, candidates (a list), candidate_text, candidate_grade, [input], [system]

``input`` is appended to a text prompt after a blank line, as the Alpaca reader does. The row's
top-level fields that no mapped path reads from are kept in each record's ``meta`` (as every reader
keeps the fields it does not read), so records can be joined back on the source's own ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from curation.ingest.readers.base import (
    Reader,
    Record,
    RowError,
    candidate,
    dense_grades,
    extra_meta,
    msg,
    optional_text,
    text,
)
from curation.ingest.readers.turns import normalize_messages
from schemas import Kind

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")

#: Label values understood without configuration (Chatbot-Arena and common numeric styles).
DEFAULT_LABEL_VALUES = {
    "a": "a",
    "b": "b",
    "model_a": "a",
    "model_b": "b",
    "1": "a",
    "2": "b",
    "0": "tie",
    "tie": "tie",
    "tie (bothbad)": "tie",
    "both": "tie",
    "equal": "tie",
}
TARGETS: dict[str, set[str]] = {
    "sft": {"prompt", "response", "input", "system", "messages", "role_key", "content_key"},
    "pair": {
        "prompt",
        "chosen",
        "rejected",
        "input",
        "system",
        "strength",
        "response_a",
        "response_b",
        "label",
    },
    "ranking": {"prompt", "candidates", "candidate_text", "candidate_grade", "input", "system"},
}
#: Targets that name keys inside each turn or candidate, not paths into the row.
_INNER = {"role_key", "content_key", "candidate_text", "candidate_grade"}


def get_path(row: Any, path: str) -> Any:
    """Value at a dotted/indexed path; raises RowError naming the path if absent."""
    value = row
    for name, index in _STEP.findall(path):
        if name:
            if isinstance(value, list) and name.isdigit():
                index, name = name, ""
            elif not isinstance(value, Mapping) or name not in value:
                raise RowError(path, "missing")
            else:
                value = value[name]
                continue
        i = int(index)
        if not isinstance(value, list) or i >= len(value):
            raise RowError(path, f"no element [{i}]")
        value = value[i]
    return value


class MappingReader(Reader):
    name = "map"
    kind: Kind = "sft"
    summary = "Column mapping: --kind K --map target=path ... (any other layout)"

    def __init__(
        self, kind: Kind, mapping: Mapping[str, str], label_values: Mapping[str, str] | None = None
    ) -> None:
        unknown = set(mapping) - TARGETS[kind]
        if unknown:
            raise ValueError(
                f"--map: unknown target(s) {', '.join(sorted(unknown))} for kind {kind}; "
                f"valid targets: {', '.join(sorted(TARGETS[kind]))}"
            )
        self.kind = kind
        self.mapping = dict(mapping)
        self.label_values = {str(k).lower(): v for k, v in (label_values or DEFAULT_LABEL_VALUES).items()}
        bad = {v for v in self.label_values.values() if v not in ("a", "b", "tie")}
        if bad:
            raise ValueError(f"--label-value: values must map to a, b or tie, got {sorted(bad)}")
        need = {
            "sft": [{"prompt", "response"}, {"messages"}],
            "pair": [{"prompt", "chosen", "rejected"}, {"prompt", "response_a", "response_b", "label"}],
            "ranking": [{"prompt", "candidates", "candidate_text", "candidate_grade"}],
        }[kind]
        if not any(n <= set(mapping) for n in need):
            options = " or ".join("{" + ", ".join(sorted(n)) + "}" for n in need)
            raise ValueError(f"--map for kind {kind} needs {options}; got {sorted(mapping)}")
        #: the top-level fields the mapped paths read from; the others go to meta
        self.reads = frozenset(
            steps[0][0] for t, p in self.mapping.items() if t not in _INNER and (steps := _STEP.findall(p))
        )

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return False  # only by explicit choice

    def options(self) -> dict[str, Any]:
        return {"kind": self.kind, "map": self.mapping, "label_values": self.label_values}

    def _text(self, row: Mapping[str, Any], target: str) -> str:
        return text(get_path(row, self.mapping[target]), self.mapping[target])

    def _prompt(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        value = get_path(row, self.mapping["prompt"])
        if isinstance(value, list):
            prompt = normalize_messages(value, self.mapping["prompt"])
        else:
            user = text(value, self.mapping["prompt"])
            if "input" in self.mapping:
                extra = get_path(row, self.mapping["input"])
                if extra not in (None, ""):
                    user = f"{user}\n\n{text(extra, self.mapping['input'], allow_empty=True)}"
            prompt = [msg("user", user)]
        if "system" in self.mapping:
            system = optional_text(get_path(row, self.mapping["system"]), self.mapping["system"])
            if system is not None:
                prompt = [msg("system", system), *prompt]
        return prompt

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        meta = extra_meta(row, self.reads)
        if self.kind == "sft":
            if "messages" in self.mapping:
                messages = normalize_messages(
                    get_path(row, self.mapping["messages"]),
                    self.mapping["messages"],
                    self.mapping.get("role_key", "role"),
                    self.mapping.get("content_key", "content"),
                )
            else:
                messages = [*self._prompt(row), msg("assistant", self._text(row, "response"))]
            return [{"messages": messages, "meta": meta}]
        if self.kind == "pair":
            prompt = self._prompt(row)
            strength = None
            if "label" in self.mapping:
                raw = get_path(row, self.mapping["label"])
                verdict = self.label_values.get(str(raw).strip().lower())
                if verdict is None:
                    raise RowError(
                        self.mapping["label"],
                        f"label value {raw!r} is not in the label mapping "
                        f"({', '.join(sorted(self.label_values))}); add it with --label-value",
                    )
                if verdict == "tie":
                    raise RowError(self.mapping["label"], f"tie ({raw!r}): ties never become pairs")
                a, b = self._text(row, "response_a"), self._text(row, "response_b")
                chosen, rejected = (a, b) if verdict == "a" else (b, a)
            else:
                chosen, rejected = self._text(row, "chosen"), self._text(row, "rejected")
            if "strength" in self.mapping:
                s = get_path(row, self.mapping["strength"])
                if isinstance(s, bool) or not isinstance(s, int | float) or not 0.5 <= s <= 1.0:
                    raise RowError(
                        self.mapping["strength"], f"strength must be a number in [0.5, 1], got {s!r}"
                    )
                strength = float(s)
            return [
                {
                    "prompt": prompt,
                    "chosen": [msg("assistant", chosen)],
                    "rejected": [msg("assistant", rejected)],
                    "strength": strength,
                    "meta": meta,
                }
            ]
        items = get_path(row, self.mapping["candidates"])
        if not isinstance(items, list) or len(items) < 2:
            raise RowError(self.mapping["candidates"], "a ranking needs a list of at least 2 candidates")
        contents, scores = [], []
        for i, item in enumerate(items):
            contents.append(
                text(
                    get_path(item, self.mapping["candidate_text"]),
                    f"{self.mapping['candidates']}[{i}].{self.mapping['candidate_text']}",
                )
            )
            g = get_path(item, self.mapping["candidate_grade"])
            if isinstance(g, bool) or not isinstance(g, int | float) or g != g:
                raise RowError(
                    f"{self.mapping['candidates']}[{i}].{self.mapping['candidate_grade']}",
                    f"expected a number (not NaN), got {g!r}",
                )
            scores.append(float(g))
        grades = dense_grades(scores)
        return [
            {
                "prompt": self._prompt(row),
                "candidates": [candidate(c, g) for c, g in zip(contents, grades, strict=True)],
                "meta": meta,
            }
        ]
