"""An LLM judge behind an OpenAI-compatible chat-completions endpoint, rating conversations with the UAL rubric.

Requests go through the shared client (chat_client.py: bounded concurrency, timeouts, retries
with backoff on timeouts, connection errors, 429 and 5xx). The reply's first integer in 0-99 is
the score; a reply without one is an error that names the record.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from curation.scoring.chat_client import EndpointConfig, JudgeError, complete_all, message_content

UAL_RUBRIC = """You rate how much the assistant's response in a conversation could legitimately vary: \
how many different responses would be equally good.
Give a single integer from 0 to 99:
- 70-99: casual or creative conversation (chit-chat, stories, poems, opinions, brainstorming): many good answers.
- 40-69: semi-formal content mixing facts and expression (explanations, advice, summaries, emails).
- 0-39: technical, mathematical or coding tasks with few correct answers (calculations, proofs, code, facts).
Reply with the integer only."""
RUBRIC_VERSION = "ual-1"
_INT = re.compile(r"\b(\d{1,2})\b")

__all__ = ["RUBRIC_VERSION", "UAL_RUBRIC", "JudgeConfig", "JudgeError", "parse_score", "rate"]


@dataclass
class JudgeConfig(EndpointConfig):
    max_tokens: int = 8


def parse_score(text: str) -> int | None:
    m = _INT.search(text or "")
    return int(m.group(1)) if m else None


def _score(reply: dict, name: str) -> int:
    content = message_content(reply, name)
    score = parse_score(content)
    if score is None:
        raise JudgeError(f"record {name}: judge reply has no score 0-99: {content[:200]!r}")
    return score


def rate(conversations: Sequence[str], names: Sequence[str], cfg: JudgeConfig) -> list[int]:
    """Rubric scores 0-99, one per conversation (``names`` identify records in error messages)."""
    bodies = [
        {
            "temperature": 0,
            "max_tokens": cfg.max_tokens,
            "messages": [{"role": "system", "content": UAL_RUBRIC}, {"role": "user", "content": text}],
        }
        for text in conversations
    ]
    return complete_all(bodies, names, cfg, _score)
