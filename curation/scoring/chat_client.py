"""The one client of OpenAI-compatible chat-completions endpoints (vLLM, llama.cpp server, hosted APIs).

Both judges use it: the UAL rubric judge (judge.py) and the pairwise judge (pairwise_judge.py).
``complete_all`` posts one request per body, at most ``concurrency`` at a time, each with a timeout,
and retries timeouts, connection errors, 408/409/429 and 5xx with exponential backoff (jittered,
at least the server's ``Retry-After``, at most ``max_backoff_s``). Any other status, or a reply
that is not a chat completion, fails at once. Every error is a ``JudgeError`` of one line that
names the record and the endpoint (the URL without credentials or query string); on the first
error the other requests are cancelled.

The API key comes from ``api_key`` or the environment variable named by ``api_key_env``; it is
sent as a Bearer header and never part of a repr, an error, a cache key or a manifest.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")
RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx


class JudgeError(RuntimeError):
    """A judge request failed; the message is one line naming the record and the endpoint."""

    def __init__(self, message: str, status: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of the last reply, None for transport errors
        self.transient = transient  # the endpoint failed every retry (timeouts, 429, 5xx): it may recover


@dataclass
class EndpointConfig:
    """Where and how to reach a chat-completions endpoint."""

    base_url: str = "http://127.0.0.1:8000/v1"  # the endpoint's root: /chat/completions is appended
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"  # the name of the variable holding the key (never the key itself)
    api_key: str | None = field(default=None, repr=False)  # overrides api_key_env; never stored
    concurrency: int = 8
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def headers(self) -> dict[str, str]:
        key = self.api_key or os.environ.get(self.api_key_env or "")
        return {"Authorization": f"Bearer {key}"} if key else {}


def display_url(url: str) -> str:
    """``url`` fit for messages: without user:password@ and without the query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:  # an HTTP date: not worth parsing, the backoff applies
        return 0.0


async def _complete_all(
    bodies: Sequence[dict], names: Sequence[str], cfg: EndpointConfig, parse: Callable[[dict, str], T]
) -> list[T]:
    import httpx

    url, shown, headers = cfg.url, display_url(cfg.url), cfg.headers()
    sem = asyncio.Semaphore(max(1, cfg.concurrency))

    async def one(client: httpx.AsyncClient, body: dict, name: str) -> T:
        body = {"model": cfg.model} | body
        last, status, wait = "", None, 0.0
        for attempt in range(cfg.retries + 1):
            async with sem:
                try:
                    resp = await client.post(url, json=body, headers=headers)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    last, status, wait = f"{type(exc).__name__}: {_one_line(exc) or 'no detail'}", None, 0.0
                else:
                    if resp.status_code == 200:
                        try:
                            reply = resp.json()
                        except ValueError:
                            raise JudgeError(
                                f"record {name}: judge at {shown} sent a reply that is not JSON: "
                                f"{_one_line(resp.text)!r}",
                                200,
                            ) from None
                        return parse(reply, name)
                    status = resp.status_code
                    last = f"HTTP {status}: {_one_line(resp.text)}"
                    if status not in RETRY_STATUS and status < 500:
                        raise JudgeError(
                            f"record {name}: judge at {shown} refused the request ({last})", status
                        )
                    wait = _retry_after(resp.headers.get("Retry-After"))
            if attempt < cfg.retries:
                backoff = cfg.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
                await asyncio.sleep(min(cfg.max_backoff_s, max(backoff, wait)))
        raise JudgeError(
            f"record {name}: judge at {shown} failed after {cfg.retries + 1} attempts ({last})",
            status,
            transient=True,
        )

    async with httpx.AsyncClient(timeout=cfg.timeout_s) as client:
        tasks = [asyncio.ensure_future(one(client, b, n)) for b, n in zip(bodies, names, strict=True)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion, also from a thread that already runs an event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def complete_all(
    bodies: Sequence[dict], names: Sequence[str], cfg: EndpointConfig, parse: Callable[[dict, str], T]
) -> list[T]:
    """``parse(reply, name)`` of the chat completion of each body, in order.

    Each body is a chat-completions request without ``model`` (taken from ``cfg``); ``names``
    identify the records in errors. ``parse`` gets the decoded JSON reply and may raise ``JudgeError``.
    """
    return _run(_complete_all(bodies, names, cfg, parse))


def message_content(reply: dict, name: str, shown: str = "the judge") -> str:
    """The assistant text of a chat completion (an error naming the record if it has none)."""
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError(
            f"record {name}: {shown} sent no choices[0].message.content: {_one_line(reply)!r}"
        ) from None
    return content or ""
