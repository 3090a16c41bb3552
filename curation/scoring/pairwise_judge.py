"""The pairwise LLM judge behind ``curate score reward_margin --backend judge``.

Each pair goes to a judge behind an OpenAI-compatible chat-completions endpoint twice, with the
pairwise rubric (``SYSTEM_PROMPT``, version ``PROMPT_VERSION``): order ``cr`` shows the chosen
response as A and the rejected as B, order ``rc`` swaps them. The judge answers one letter.

What the margin means. For each order o, x_o is the judge's support for the label (chosen better):
- from logprobs (the request asks ``logprobs: true, top_logprobs: k``): l_o = log P(A) - log P(B) at
  the answer token (the first generated token that is a letter A or B, else the first position whose
  alternatives list one; variants such as " A" are summed; a letter missing from the list gets the
  bound min(least listed probability, mass left over)), clipped to +-``LOG_ODDS_CAP``; x_cr = l_cr and
  x_rc = -l_rc;
- from votes (the reply's text): x_o = +1 when the judge picked the chosen response, -1 when it
  picked the rejected one, 0 when the reply names neither.
margin mu = (x_cr + x_rc) / 2, so mu > 0 means the judge agrees with the label. A judge that adds b
to the log-odds of whatever stands first gives x_cr = s + b and x_rc = s - b: the position bias
cancels. The two orders are the "models" axis of reward_margin's combine step: margin_std =
|x_cr - x_rc| / sqrt(2), n_models = 2, and reward_chosen = mu / 2 = -reward_rejected (a judge gives a
difference, centred per pair). ``judge_swap_inconsistent`` is true when the two orders name different
winners (the judge followed the position, not the content), NULL when an order names none.

``judge_margin``: ``auto`` (logprobs when every reply that named a winner carried logprobs for it,
else votes), ``logprobs`` or ``votes``. Quality classes are reward_margin's (quantiles of mu by
default); with votes mu takes five values, so unless thresholds by value are given the classes are
by value: incorrect when mu < 0, ambiguous when mu < 0.5.

What is cached: per pair, both replies' letter, log-odds and text (scores/cache/pairwise_judge/<key>,
chunk by chunk: a killed run resumes, a rerun sends no request, and switching ``judge_margin`` reuses
it). The key hashes the prompt version, the model name and the request settings; not the URL (the
same model served elsewhere reuses the cache: give a different model name to keep them apart) and
never the API key, which is read from ``api_key`` or the environment and only sent as a header.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from curation.scoring.cache import CacheSpec, CacheStats, cached_compute
from curation.scoring.chat_client import EndpointConfig, JudgeError, complete_all, message_content
from curation.scoring.texts import plain_render, response_text

if TYPE_CHECKING:
    from curation.core.store import Store

CACHE_NAME = "pairwise_judge"
PROMPT_VERSION = "pairwise-1"  # the prompt, its layout and the reply parsing: part of the cache key
URL_ENV = "CURATE_JUDGE_URL"  # the endpoint when --param base_url is not given
MODEL_ENV = "CURATE_JUDGE_MODEL"  # the judge's model name when --model is not given
KEY_ENVS = ("CURATE_JUDGE_API_KEY", "OPENAI_API_KEY")  # the first one set holds the key
MARGIN_MODES = ("auto", "logprobs", "votes")
LOG_ODDS_CAP = 10.0  # beyond odds of e^10 a judge's certainty says no more
MAX_TOKENS = 4  # room for "[[A]]" or "**A**"; the answer token is what counts
CONTEXT_CHARS = 12000  # the conversation keeps its last characters
RESPONSE_CHARS = 6000  # each response keeps its first characters
VOTE_THRESHOLDS = {"incorrect_below": 0.0, "ambiguous_below": 0.5}

SYSTEM_PROMPT = """You are a careful, impartial judge of AI assistant responses. You see a conversation \
between a user and an assistant, then two candidate responses for the assistant's next turn, A and B.
Decide which response is better for the user's last message: more helpful, correct, honest and harmless, \
and on point. Do not let the order of the responses, their length or their style sway you.
Answer with exactly one letter: A or B."""

USER_TEMPLATE = """<conversation>
{conversation}
</conversation>

<response_A>
{a}
</response_A>

<response_B>
{b}
</response_B>

Which response is better, A or B? Answer with the single letter."""

_VERDICT = re.compile(
    r"^[\W_]*(?:(?i:answer|response|verdict|output)[\W_]*(?:(?i:is)[\W_]+)?)?([AB])(?![A-Za-z0-9])"
)
_LETTER_STRIP = " \t\n*[](){}\"'.:"


# ------------------------------------------------------------------ prompt
def judge_messages(prompt: Sequence[dict], first: str, second: str) -> list[dict[str, str]]:
    """The chat messages asking which of ``first`` (A) and ``second`` (B) answers ``prompt`` better."""
    conversation = plain_render(prompt)
    if len(conversation) > CONTEXT_CHARS:
        conversation = "[... earlier turns cut ...]\n" + conversation[-CONTEXT_CHARS:]
    a, b = (t if len(t) <= RESPONSE_CHARS else t[:RESPONSE_CHARS] + " [... cut ...]" for t in (first, second))
    user = USER_TEMPLATE.format(conversation=conversation, a=a, b=b)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# ------------------------------------------------------------------- reply
def parse_verdict(text: str) -> str | None:
    """The letter a reply starts with ("A", "**B**", "[[A]]", "Answer: B"), else None."""
    m = _VERDICT.match(text or "")
    return m.group(1) if m else None


def _letter(token: str) -> str | None:
    t = token.strip(_LETTER_STRIP)
    return t if t in ("A", "B") else None


def _alternatives(position: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for alt in [position, *(position.get("top_logprobs") or [])]:
        if not isinstance(alt, dict):
            continue
        tok, lp = alt.get("token"), alt.get("logprob")
        if isinstance(tok, str) and isinstance(lp, int | float) and not isinstance(lp, bool):
            out.setdefault(tok, min(float(lp), 0.0))
    return out


def verdict_log_odds(positions: Sequence[dict] | None) -> float | None:
    """log P(A) - log P(B) at the answer token of a chat completion's ``logprobs.content`` (see module doc)."""
    positions = [p for p in positions or [] if isinstance(p, dict)]
    listed = [_alternatives(p) for p in positions]
    sampled = [i for i, p in enumerate(positions) if _letter(str(p.get("token")))]
    candidates = [i for i, alts in enumerate(listed) if any(_letter(t) for t in alts)]
    at = sampled[0] if sampled else (candidates[0] if candidates else None)
    if at is None:
        return None
    alts = listed[at]
    left = 1.0 - sum(math.exp(lp) for lp in alts.values())
    bound = min(min(alts.values()), math.log(left) if left > 0 else -math.inf)
    side = {x: [lp for t, lp in alts.items() if _letter(t) == x] for x in ("A", "B")}
    la, lb = (float(np.logaddexp.reduce(side[x])) if side[x] else bound for x in ("A", "B"))
    if math.isinf(la) and math.isinf(lb):
        return 0.0
    return float(np.clip(la - lb, -LOG_ODDS_CAP, LOG_ODDS_CAP))


def parse_reply(reply: dict, name: str) -> dict[str, Any]:
    """The letter (or None), the log-odds of A over B (or None) and the text of one judge reply."""
    text = message_content(reply, name)
    logprobs = reply["choices"][0].get("logprobs")
    positions = logprobs.get("content") if isinstance(logprobs, dict) else None
    return {"verdict": parse_verdict(text), "log_odds": verdict_log_odds(positions), "text": text[:200]}


CACHE_SCHEMA = pa.schema(
    [("id", pa.string())]
    + [
        f
        for o in ("cr", "rc")
        for f in (
            pa.field(f"verdict_{o}", pa.string()),  # the letter the judge wrote, A | B | NULL
            pa.field(f"log_odds_{o}", pa.float64()),  # log P(A) - log P(B), NULL without logprobs
            pa.field(f"reply_{o}", pa.string()),  # the reply's first 200 characters
        )
    ]
)


# ------------------------------------------------------------------ margins
def order_values(cache: pa.Table, mode: str) -> tuple[np.ndarray, str]:
    """(x_cr, x_rc) per pair, shape (pairs, 2), and the mode used (``auto`` resolved); see the module doc."""
    if mode not in MARGIN_MODES:
        raise ValueError(f"unknown judge_margin {mode!r}: use {', '.join(MARGIN_MODES)}")
    ids = cache.column("id").to_pylist()
    sign = {"cr": {"A": 1.0, "B": -1.0}, "rc": {"A": -1.0, "B": 1.0}}
    votes = np.stack(
        [[sign[o].get(v, 0.0) for v in cache.column(f"verdict_{o}").to_pylist()] for o in ("cr", "rc")], 1
    )
    lo = np.stack(
        [
            cache.column(f"log_odds_{o}").to_numpy(zero_copy_only=False).astype(np.float64)
            for o in ("cr", "rc")
        ],
        1,
    )
    lacking = (votes != 0) & np.isnan(lo)  # a reply that named a winner without its logprobs
    if mode == "auto":
        mode = "logprobs" if not lacking.any() and not np.isnan(lo).all() else "votes"
    if mode == "votes":
        return votes, mode
    if lacking.any() or np.isnan(lo).all():
        row = int(np.argmax(lacking.any(1))) if lacking.any() else 0
        raise ValueError(
            f"judge_margin=logprobs: the judge's reply for record {ids[row] if ids else '?'} carries no logprobs "
            "for A or B; use --param judge_margin=votes (or auto)"
        )
    return np.nan_to_num(lo * np.array([1.0, -1.0]), nan=0.0), mode


def swap_inconsistent(values: np.ndarray) -> pa.Array:
    """True where the two orders name different winners, NULL where one names none."""
    s = np.sign(values)
    return pa.array(s[:, 0] != s[:, 1], pa.bool_(), mask=(s == 0).any(1))


@dataclass
class JudgeMargins:
    """What the judge backend hands reward_margin's combine step."""

    values: np.ndarray  # (pairs, 2): x_cr, x_rc
    margin_from: str  # logprobs | votes
    fingerprint: str
    params: dict
    stats: CacheStats

    def rewards(self) -> tuple[np.ndarray, np.ndarray]:
        """(reward_chosen, reward_rejected) per order: +x/2 and -x/2, so their difference is x."""
        return self.values / 2, -self.values / 2

    def thresholds(self, combine_kw: dict) -> dict:
        """``combine_kw`` with class thresholds by value for votes, unless the caller gave values."""
        if self.margin_from != "votes" or combine_kw.get("incorrect_below") is not None:
            return combine_kw
        if combine_kw.get("ambiguous_below") is not None:
            return combine_kw
        return combine_kw | VOTE_THRESHOLDS

    def annotate(self, table: pa.Table, report: dict) -> tuple[pa.Table, dict]:
        """The reward_margin result with ``judge_swap_inconsistent`` filled, and the judge's report."""
        inconsistent = swap_inconsistent(self.values)
        col = table.schema.get_field_index("judge_swap_inconsistent")
        table = table.set_column(col, table.schema.field(col), inconsistent)
        x = self.values
        report = report | {
            "judge_model": self.params["judge_model"],
            "judge_margin_from": self.margin_from,
            "judge_swap_inconsistent_share": float(np.mean(inconsistent.fill_null(False))) if len(x) else 0.0,
            "judge_agree_both_orders": float(((x > 0).all(1)).mean()) if len(x) else 0.0,
            "judge_position_bias": float(((x[:, 0] - x[:, 1]) / 2).mean()) if len(x) else 0.0,
            "judge_orders_without_verdict": int((x == 0).sum()),
        }
        return table, report


# ---------------------------------------------------------------------- run
def endpoint(
    models: Sequence[str] | None,
    base_url: str | None,
    api_key: str | None,
    api_key_env: str | None,
    concurrency: int,
    timeout_s: float,
    retries: int,
) -> EndpointConfig:
    """The endpoint from the options, else CURATE_JUDGE_URL / CURATE_JUDGE_MODEL; a clear error if unset."""
    url = base_url or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(
            f"backend judge needs the endpoint: --param base_url=http://HOST:PORT/v1 or ${URL_ENV}"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"judge base_url {url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
    models = list(models or [])
    if len(models) > 1:
        raise ValueError(f"backend judge takes one --model (the judge's name), got {len(models)}")
    model = models[0] if models else os.environ.get(MODEL_ENV)
    if not model:
        raise ValueError(f"backend judge needs the judge's model name: --model NAME or ${MODEL_ENV}")
    key_env = api_key_env or next((e for e in KEY_ENVS if os.environ.get(e)), KEY_ENVS[0])
    if concurrency < 1 or retries < 0 or timeout_s <= 0:
        raise ValueError("judge concurrency must be >= 1, retries >= 0 and timeout_s > 0")
    return EndpointConfig(
        base_url=url,
        model=model,
        api_key=api_key,
        api_key_env=key_env,
        concurrency=concurrency,
        timeout_s=timeout_s,
        retries=retries,
    )


def judge_margins(
    store: Store,
    records: list[dict],
    models: Sequence[str] | None = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    api_key_env: str | None = None,
    concurrency: int = 8,
    timeout_s: float = 60.0,
    retries: int = 4,
    logprobs: bool = True,
    top_logprobs: int = 5,
    margin_from: str = "auto",
    chunk_size: int = 256,
    progress: bool = True,
) -> JudgeMargins:
    """Ask the judge about every pair in both orders (cached per pair) and turn the replies into margins."""
    cfg = endpoint(models, base_url, api_key, api_key_env, concurrency, timeout_s, retries)
    if margin_from not in MARGIN_MODES:
        raise ValueError(f"unknown judge_margin {margin_from!r}: use {', '.join(MARGIN_MODES)}")
    if logprobs and not 1 <= top_logprobs <= 20:
        raise ValueError(f"top_logprobs must lie in 1..20, got {top_logprobs}")
    if not logprobs and margin_from == "logprobs":
        raise ValueError("judge_margin=logprobs needs judge_logprobs=true")
    request: dict[str, Any] = {"temperature": 0, "max_tokens": MAX_TOKENS}
    if logprobs:
        request |= {"logprobs": True, "top_logprobs": top_logprobs}
    cache = CacheSpec(CACHE_NAME, PROMPT_VERSION, cfg.model, request)

    def compute(pos: np.ndarray) -> pa.Table:
        bodies, names = [], []
        for i in pos:
            r = records[i]
            chosen, rejected = response_text(r["chosen"]), response_text(r["rejected"])
            bodies.append(request | {"messages": judge_messages(r["prompt"], chosen, rejected)})
            bodies.append(request | {"messages": judge_messages(r["prompt"], rejected, chosen)})
            names += [f"{r['id']} (chosen as A)", f"{r['id']} (rejected as A)"]
        try:
            replies = complete_all(bodies, names, cfg, parse_reply)
        except JudgeError as exc:
            if exc.status == 400 and logprobs:
                raise JudgeError(
                    f"{exc}; if the endpoint does not take logprobs, pass --param judge_logprobs=false", 400
                ) from None
            raise
        cols: dict[str, list] = {}
        for o, part in (("cr", replies[0::2]), ("rc", replies[1::2])):
            cols[f"verdict_{o}"] = [x["verdict"] for x in part]
            cols[f"log_odds_{o}"] = [x["log_odds"] for x in part]
            cols[f"reply_{o}"] = [x["text"] for x in part]
        return pa.table({n: pa.array(cols[n], CACHE_SCHEMA.field(n).type) for n in CACHE_SCHEMA.names[1:]})

    table, stats = cached_compute(
        store,
        cache,
        [r["id"] for r in records],
        compute,
        schema=CACHE_SCHEMA,
        chunk_size=chunk_size,
        progress=progress,
        desc=f"judge {cfg.model}",
    )
    values, used = order_values(table, margin_from)
    params = {
        "backend": "judge",
        "judge_model": cfg.model,
        "prompt": PROMPT_VERSION,
        "judge_cache": cache.key,
    }
    params["margin_from"] = used
    return JudgeMargins(values, used, cfg.model, params, stats)
