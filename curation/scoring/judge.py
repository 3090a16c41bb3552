"""An LLM judge behind an OpenAI-compatible chat-completions endpoint, rating conversations with the UAL rubric.

Requests run concurrently (an asyncio semaphore bounds them), each with a timeout,
retried with exponential backoff on timeouts, connection errors, 429 and 5xx.
The reply's first integer in 0-99 is the score; a reply without one is an error
that names the record.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

UAL_RUBRIC = """You rate how much the assistant's response in a conversation could legitimately vary: \
how many different responses would be equally good.
Give a single integer from 0 to 99:
- 70-99: casual or creative conversation (chit-chat, stories, poems, opinions, brainstorming): many good answers.
- 40-69: semi-formal content mixing facts and expression (explanations, advice, summaries, emails).
- 0-39: technical, mathematical or coding tasks with few correct answers (calculations, proofs, code, facts).
Reply with the integer only."""
RUBRIC_VERSION = "ual-1"
_INT = re.compile(r"\b(\d{1,2})\b")


class JudgeError(RuntimeError):
    """The judge could not rate a record; the message names it."""


@dataclass
class JudgeConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"  # the name of the variable holding the key (never the key itself)
    concurrency: int = 8
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 0.5
    max_tokens: int = 8


def parse_score(text: str) -> int | None:
    m = _INT.search(text or "")
    return int(m.group(1)) if m else None


async def _rate_all(conversations: Sequence[str], names: Sequence[str], cfg: JudgeConfig) -> list[int]:
    import httpx

    headers = {}
    key = os.environ.get(cfg.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    sem = asyncio.Semaphore(cfg.concurrency)
    url = cfg.base_url.rstrip("/") + "/chat/completions"

    async def one(client: httpx.AsyncClient, text: str, name: str) -> int:
        body = {
            "model": cfg.model,
            "temperature": 0,
            "max_tokens": cfg.max_tokens,
            "messages": [{"role": "system", "content": UAL_RUBRIC}, {"role": "user", "content": text}],
        }
        last: str = ""
        for attempt in range(cfg.retries + 1):
            async with sem:
                try:
                    resp = await client.post(url, json=body, headers=headers)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if resp.status_code == 200:
                        content = resp.json()["choices"][0]["message"]["content"]
                        score = parse_score(content)
                        if score is None:
                            raise JudgeError(
                                f"record {name}: judge reply has no score 0-99: {content[:200]!r}"
                            )
                        return score
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    if resp.status_code not in (408, 409, 429) and resp.status_code < 500:
                        raise JudgeError(f"record {name}: judge at {url} refused the request ({last})")
            if attempt < cfg.retries:
                await asyncio.sleep(cfg.backoff_s * 2**attempt)
        raise JudgeError(f"record {name}: judge at {url} failed after {cfg.retries + 1} attempts ({last})")

    async with httpx.AsyncClient(timeout=cfg.timeout_s) as client:
        return await asyncio.gather(*(one(client, t, n) for t, n in zip(conversations, names, strict=True)))


def rate(conversations: Sequence[str], names: Sequence[str], cfg: JudgeConfig) -> list[int]:
    """Rubric scores 0-99, one per conversation (``names`` identify records in error messages)."""
    return asyncio.run(_rate_all(conversations, names, cfg))
