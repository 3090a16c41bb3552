"""reward_margin --backend judge on real HH-RLHF pairs, against a real HTTP judge on 127.0.0.1.

The server below speaks /v1/chat/completions with fixed rules chosen by the request's model name
("longer": prefers the longer response by (len A - len B) / 100 in log-odds, plus a position bias
toward A; "always-a": answers A whatever it sees) and returns logprobs or not. Our client code runs
unmocked: httpx, retries, the cache, the CLI.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pytest

from curation import catalog
from curation.scoring import run_scorer, versions
from curation.scoring.chat_client import (
    EndpointConfig,
    JudgeError,
    complete_all,
    display_url,
    message_content,
)
from curation.scoring.pairwise_judge import parse_verdict, verdict_log_odds
from tests.fixtures.paths import REPO
from tests.fixtures.stores import build_store

N = 40
BIAS = 0.7071  # never a multiple of 0.01, so (len A - len B) / 100 never equals it
_A = re.compile(r"<response_A>\n(.*?)\n</response_A>", re.S)
_B = re.compile(r"<response_B>\n(.*?)\n</response_B>", re.S)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class FakeJudge:
    """A threaded HTTP server with an OpenAI-compatible /v1/chat/completions and a record of requests."""

    def __init__(self, logprobs: bool = True, bias: float = 0.0) -> None:
        self.logprobs, self.bias = logprobs, bias
        self.requests: list[dict] = []  # model, A, B, authorization, body
        self.fail_first: list[int] = []  # statuses answered to the next requests, in order
        self.refuse_after: int | None = None  # answer 400 once this many requests were served
        self.retry_after = "0"  # the Retry-After header of a 429
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as vLLM and hosted APIs do

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = judge.answer(self.path, body, self.headers.get("Authorization"))
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                if status == 429:
                    self.send_header("Retry-After", judge.retry_after)
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeJudge:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def settle(self, quiet_s: float = 0.5, timeout_s: float = 30.0) -> None:
        """Wait until the requests a cancelled run had already sent are answered (none in flight and no new
        request for ``quiet_s``): a loaded machine may deliver them after the client gave up."""
        deadline, last, since = time.monotonic() + timeout_s, -1, time.monotonic()
        while time.monotonic() < deadline:
            with self.lock:
                n, busy = len(self.requests), self.in_flight
            if n != last or busy:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.05)

    def answer(self, path: str, body: dict, auth: str | None) -> tuple[int, dict]:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(0.005)  # long enough for concurrent requests to overlap
            return self._answer(path, body, auth)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, path: str, body: dict, auth: str | None) -> tuple[int, dict]:
        if path != "/v1/chat/completions":
            return 404, {"error": f"no route {path}"}
        user = body["messages"][1]["content"]
        a, b = _A.search(user).group(1), _B.search(user).group(1)
        with self.lock:
            self.requests.append({"model": body["model"], "A": a, "B": b, "auth": auth, "body": body})
            if self.fail_first:
                return self.fail_first.pop(0), {"error": "busy"}
            served = sum(1 for r in self.requests if r.get("ok"))
            if self.refuse_after is not None and served >= self.refuse_after:
                return 400, {"error": "bad request"}
            self.requests[-1]["ok"] = True
        if body["model"] == "always-a":
            lo = 3.0
        else:
            lo = float(np.clip((len(a) - len(b)) / 100, -5, 5)) + self.bias
        letter = "A" if lo >= 0 else "B"
        choice: dict = {
            "index": 0,
            "message": {"role": "assistant", "content": letter},
            "finish_reason": "stop",
        }
        if self.logprobs and body.get("logprobs"):
            pa_, pb = 0.95 * _sigmoid(lo), 0.95 * _sigmoid(-lo)  # 0.05 left to "The"
            top = [
                {"token": "A", "logprob": math.log(0.7 * pa_)},
                {"token": " A", "logprob": math.log(0.3 * pa_)},  # a variant: summed with "A"
                {"token": "B", "logprob": math.log(pb)},
                {"token": "The", "logprob": math.log(0.05)},
            ]
            top = sorted(top, key=lambda t: -t["logprob"])[: body["top_logprobs"]]
            sampled = next(t for t in top if t["token"] == letter)
            choice["logprobs"] = {
                "content": [sampled | {"bytes": list(letter.encode()), "top_logprobs": top}]
            }
        return 200, {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice]}

    def new_requests(self, since: int) -> list[dict]:
        return self.requests[since:]


@pytest.fixture(scope="module")
def hh(tmp_path_factory, shared_data):
    return build_store(tmp_path_factory.mktemp("judge"), shared_data, hh=N)


def scored(st, cols: str = "*") -> list[dict]:
    with contextlib.closing(catalog.connect(st)) as con:
        return con.sql(f"SELECT {cols} FROM scored_pairs ORDER BY id").to_arrow_table().to_pylist()


def text(messages) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "assistant")


def length_log_odds(row) -> float:
    return float(np.clip((len(text(row["chosen"])) - len(text(row["rejected"]))) / 100, -5, 5))


def judge(st, url, model, **kw):
    return run_scorer(
        st, "reward_margin", backend="judge", models=[model], base_url=url, progress=False, **kw
    )


def test_logprob_margins_ask_both_orders_cancel_position_bias_and_rerun_from_cache(hh):
    with FakeJudge(logprobs=True, bias=BIAS) as srv:
        s = judge(hh, srv.url, "longer", concurrency=4)
        assert s.records == N and s.computed == N and len(srv.requests) == 2 * N
        assert 1 < srv.max_in_flight <= 4  # concurrent, and bounded by the option
        rows = scored(hh)
        asked = {(r["A"], r["B"]) for r in srv.requests}
        for r in rows:  # each pair in both orders
            c, rj = text(r["chosen"]), text(r["rejected"])
            assert (c, rj) in asked and (rj, c) in asked
        assert all(r["body"]["logprobs"] is True and r["body"]["top_logprobs"] == 5 for r in srv.requests)
        assert all(r["body"]["temperature"] == 0 for r in srv.requests)
        for r in rows:
            f = length_log_odds(r)
            # x_cr = f + b, x_rc = f - b: the mean is f, the position bias cancels
            assert r["margin_raw"] == pytest.approx(f, abs=1e-9)
            assert r["reward_chosen"] == pytest.approx(f / 2) and r["reward_rejected"] == pytest.approx(
                -f / 2
            )
            assert r["n_models"] == 2
            assert r["judge_swap_inconsistent"] == (abs(f) < BIAS)
            assert r["adaptive_margin"] == pytest.approx(max(r["margin"], 0.0), abs=1e-9)
        assert any(r["judge_swap_inconsistent"] for r in rows) and not all(
            r["judge_swap_inconsistent"] for r in rows
        )
        assert s.report["judge_margin_from"] == "logprobs"
        assert s.report["judge_position_bias"] == pytest.approx(BIAS, abs=1e-9)
        # this judge prefers the longer answer and nothing else: length control leaves its margin nothing
        # (residualised out of fold on the length features) and its flagged set the whole set's make-up
        assert s.report["max_abs_corr_margin_raw_length_features"] > 0.9
        # (linear, out of fold, on 40 pairs: much of this judge's non-linear length rule goes, not all)
        assert (
            s.report["max_abs_corr_margin_length_features"]
            < s.report["max_abs_corr_margin_raw_length_features"] - 0.25
        )
        assert abs(s.report["chosen_longer_share_incorrect"] - s.report["chosen_longer_share"]) <= 0.15
        raw = judge(hh, srv.url, "longer", length_control=False)  # the judge's own margins: cached replies
        assert raw.computed == 0 and len(srv.requests) == 2 * N
        rows = scored(hh)
        quantile_cut = np.quantile([length_log_odds(r) for r in rows], 0.2)  # classes by quantile (default)
        assert {r["quality_class"] == "incorrect" for r in rows if length_log_odds(r) < quantile_cut} == {
            True
        }
        assert all(r["margin"] == pytest.approx(length_log_odds(r), abs=1e-9) for r in rows)
        assert all(r["margin_std"] == pytest.approx(math.sqrt(2) * BIAS, abs=1e-9) for r in rows)

        n = len(srv.requests)
        again = judge(hh, srv.url, "longer", concurrency=4)
        assert again.computed == 0 and again.cached == N and again.skipped and len(srv.requests) == n

        # the same cached replies, read as votes: no new request
        votes = judge(hh, srv.url, "longer", judge_margin="votes")
        assert votes.computed == 0 and len(srv.requests) == n and votes.key != s.key
        assert votes.report["judge_margin_from"] == "votes"
        for r in scored(hh):
            f = length_log_odds(r)
            x_cr = 1 if f + BIAS >= 0 else -1  # the judge answers A when its log-odds >= 0
            x_rc = -1 if -f + BIAS >= 0 else 1
            assert r["margin"] == (x_cr + x_rc) / 2
            assert r["quality_class"] == {-1.0: "incorrect", 0.0: "ambiguous", 1.0: "clean"}[r["margin"]]
        assert versions(hh)["reward_margin"]["params"]["margin_from"] == "votes"


def test_votes_without_logprobs_and_a_judge_that_always_answers_a(hh):
    with FakeJudge(logprobs=False) as srv:
        s = judge(hh, srv.url, "longer-votes")
        assert s.report["judge_margin_from"] == "votes" and len(srv.requests) == 2 * N
        for r in scored(hh):
            d = len(text(r["chosen"])) - len(text(r["rejected"]))
            assert r["margin"] == (1.0 if d > 0 else -1.0 if d < 0 else 0.0)  # a length tie: A both times
            assert r["judge_swap_inconsistent"] == (d == 0)
        a = judge(hh, srv.url, "always-a")
        assert a.report["judge_swap_inconsistent_share"] == 1.0
        rows = scored(hh, "margin, margin_std, judge_swap_inconsistent, quality_class")
        assert all(r["judge_swap_inconsistent"] is True for r in rows)
        assert all(r["margin"] == 0.0 and r["quality_class"] == "ambiguous" for r in rows)
        assert all(r["margin_std"] == pytest.approx(math.sqrt(2)) for r in rows)


def test_503_and_429_are_retried(hh):
    with FakeJudge(logprobs=False) as srv:
        srv.fail_first = [503, 503, 429, 429, 500]
        s = judge(hh, srv.url, "longer-retried", retries=3)
        assert s.computed == N and len(srv.requests) == 2 * N + 5
        for r in scored(hh):
            d = len(text(r["chosen"])) - len(text(r["rejected"]))
            assert r["margin"] == (1.0 if d > 0 else -1.0 if d < 0 else 0.0)
    with FakeJudge(logprobs=False) as srv:  # more failures than retries: an error naming the record
        srv.fail_first = [503] * 100
        with pytest.raises(
            JudgeError, match=r"record [0-9a-f]{32} \(.*\): judge at .* failed after 2 attempts \(HTTP 503"
        ):
            judge(hh, srv.url, "longer-down", retries=1, concurrency=1, chunk_size=1)


def test_client_waits_for_retry_after():
    with FakeJudge(logprobs=False) as srv:
        srv.fail_first, srv.retry_after = [429], "1"
        user = "<response_A>\nlonger answer\n</response_A>\n<response_B>\nshort\n</response_B>"
        body = {"messages": [{"role": "system", "content": "judge"}, {"role": "user", "content": user}]}
        cfg = EndpointConfig(base_url=srv.url, model="longer", backoff_s=0.01, retries=2)
        start = time.perf_counter()
        assert complete_all([body], ["r1"], cfg, message_content) == ["A"]
        assert time.perf_counter() - start >= 1.0 and len(srv.requests) == 2  # waited as the server asked


def test_key_from_the_environment_is_sent_and_never_stored(hh, monkeypatch):
    secret, other = "sk-test-9f8e7d6c5b4a", "sk-param-0a1b2c3d4e5f"
    with FakeJudge(logprobs=True) as srv:
        monkeypatch.setenv("CURATE_JUDGE_URL", srv.url)
        monkeypatch.setenv("CURATE_JUDGE_MODEL", "longer-env")
        monkeypatch.setenv("CURATE_JUDGE_API_KEY", secret)
        s = run_scorer(hh, "reward_margin", backend="judge", progress=False)
        assert s.computed == N and {r["auth"] for r in srv.requests} == {f"Bearer {secret}"}
        assert {r["model"] for r in srv.requests} == {"longer-env"}
        judge(hh, srv.url, "longer-param", api_key=other)  # an explicit key wins over the environment
        assert {r["auth"] for r in srv.requests[2 * N :]} == {f"Bearer {other}"}
    catalog.refresh(hh)
    for path in hh.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and other.encode() not in data, path
    assert secret not in json.dumps(versions(hh))


def test_failed_run_resumes_from_committed_chunks(tmp_path, shared_data):
    st = build_store(tmp_path, shared_data, hh=N)
    with FakeJudge(logprobs=True, bias=BIAS) as srv:
        srv.refuse_after = 20  # one chunk of 10 pairs, then 400 for everything
        with pytest.raises(JudgeError, match=r"record [0-9a-f]{32} .*refused the request \(HTTP 400"):
            judge(st, srv.url, "longer", chunk_size=10)
        assert not (st.root / "scores" / "reward_margin" / "active.json").exists()
        srv.settle()
        srv.refuse_after = None
        before = len(srv.requests)
        s = judge(st, srv.url, "longer", chunk_size=10)
        assert s.cached == 10 and s.computed == N - 10
        assert sum(1 for r in srv.new_requests(before)) == 2 * (N - 10)  # only the pairs not yet cached
        for r in scored(st):
            assert r["margin_raw"] == pytest.approx(length_log_odds(r), abs=1e-9)


def _cli(store, *args, env=None, timeout=240):
    cmd = [
        sys.executable,
        "-m",
        "curation.cli",
        "score",
        "reward_margin",
        "--store",
        str(store),
        "--no-progress",
    ]
    return subprocess.run(
        cmd + list(args),
        cwd=REPO,
        env=os.environ | {"OMP_NUM_THREADS": "1"} | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_killed_cli_run_resumes_from_cached_chunks(tmp_path, shared_data):
    st = build_store(tmp_path, shared_data, hh=N)
    with FakeJudge(logprobs=True, bias=BIAS) as srv:
        args = [
            "--backend",
            "judge",
            "--model",
            "longer",
            "--param",
            f"base_url={srv.url}",
            "-p",
            "chunk_size=10",
        ]
        killed = _cli(st.root, *args, env={"CURATE_SCORE_KILL_AFTER_CHUNKS": "1"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert len(srv.requests) == 20  # one chunk committed, then killed
        resumed = _cli(st.root, *args)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert len(srv.requests) == 2 * N  # the rerun asked only for the 30 pairs not cached
        assert "judge_swap_inconsistent_share" in resumed.stdout
    for r in scored(st):
        assert r["margin_raw"] == pytest.approx(length_log_odds(r), abs=1e-9)
        assert r["judge_swap_inconsistent"] == (abs(length_log_odds(r)) < BIAS)


def test_unreachable_endpoint_is_one_clear_line_from_the_cli(hh):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    res = _cli(hh.root, "--backend", "judge", "--model", "m", "-p", f"base_url={url}", "-p", "retries=1")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert f"{url}/chat/completions" in lines[0] and "failed after 2 attempts" in lines[0]
    assert lines[0].startswith("error: reward_margin: record ") and "Traceback" not in res.stderr
    res = _cli(hh.root, "--backend", "judge", "--model", "m", env={"CURATE_JUDGE_URL": ""})
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "base_url" in res.stderr and "CURATE_JUDGE_URL" in res.stderr


def test_other_backends_and_older_results_leave_the_judge_column_null(hh):
    from curation.scoring.cache import ResultSpec, commit_result
    from curation.scoring.reward_margin import combine

    table, _ = combine(["a", "b", "c"], np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 0.5]))
    assert table.column("judge_swap_inconsistent").null_count == 3
    # a result written before the column existed still reads, with NULL there
    with FakeJudge(logprobs=True) as srv:
        judge(hh, srv.url, "longer-old")
    from curation.scoring.cache import active_table

    new = active_table(hh, "reward_margin")
    old = new.drop_columns(["judge_swap_inconsistent"])
    spec = ResultSpec("reward_margin", "0", "old", {"backend": "models"}, "old")
    commit_result(hh, spec, old)
    rows = scored(hh, "margin, judge_swap_inconsistent")
    assert len(rows) == N and all(r["judge_swap_inconsistent"] is None for r in rows)
    assert [r["margin"] for r in rows] == pytest.approx(sorted_margins(new, hh))
    catalog.refresh(hh)


def sorted_margins(table: pa.Table, st) -> list[float]:
    by_id = dict(zip(table.column("id").to_pylist(), table.column("margin").to_pylist(), strict=True))
    return [by_id[r["id"]] for r in scored(st, "id")]


def test_reply_parsing():
    assert [
        parse_verdict(t) for t in ("A", " B.", "**A**", "[[B]]", "Answer: A", "Response B is better")
    ] == [
        "A",
        "B",
        "A",
        "B",
        "A",
        "B",
    ]
    assert [parse_verdict(t) for t in ("Both", "", "a", "The answer is A", "AB")] == [None] * 5
    lp = math.log
    # variants summed; the sampled letter's position counts, not an earlier one listing letters
    pos = [
        {
            "token": "[[",
            "logprob": lp(0.9),
            "top_logprobs": [{"token": "[[", "logprob": lp(0.9)}, {"token": "B", "logprob": lp(0.1)}],
        },
        {
            "token": "A",
            "logprob": lp(0.5),
            "top_logprobs": [
                {"token": "A", "logprob": lp(0.5)},
                {"token": " A", "logprob": lp(0.1)},
                {"token": "B", "logprob": lp(0.2)},
            ],
        },
    ]
    assert verdict_log_odds(pos) == pytest.approx(math.log(0.6 / 0.2))
    # a letter missing from the list: at most the mass left over and at most the least listed
    only_a = [{"token": "A", "logprob": lp(0.99), "top_logprobs": [{"token": "A", "logprob": lp(0.99)}]}]
    assert verdict_log_odds(only_a) == pytest.approx(math.log(0.99 / 0.01))
    two = [
        {
            "token": "A",
            "logprob": lp(0.6),
            "top_logprobs": [{"token": "A", "logprob": lp(0.6)}, {"token": "X", "logprob": lp(0.3)}],
        }
    ]
    assert verdict_log_odds(two) == pytest.approx(math.log(0.6 / 0.1))
    certain = [{"token": "B", "logprob": 0.0, "top_logprobs": [{"token": "B", "logprob": 0.0}]}]
    assert verdict_log_odds(certain) == -10.0  # capped
    assert verdict_log_odds([{"token": "Both", "logprob": -0.1, "top_logprobs": []}]) is None
    assert verdict_log_odds(None) is None


def test_messages_show_the_url_without_credentials_and_never_the_key():
    url = "https://user:pw@judge.example:8443/v1/chat/completions?api-key=sk-in-query"
    assert display_url(url) == "https://judge.example:8443/v1/chat/completions"
    assert display_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    cfg = EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key="sk-hidden")
    assert "sk-hidden" not in repr(cfg) and cfg.headers() == {"Authorization": "Bearer sk-hidden"}
    with pytest.raises(JudgeError) as info:
        cfg.base_url, cfg.retries = "http://user:pw@127.0.0.1:9/v1", 0
        complete_all([{"messages": []}], ["r1"], cfg, message_content)
    assert "pw" not in str(info.value) and "sk-hidden" not in str(info.value)
    assert "http://127.0.0.1:9/v1/chat/completions" in str(info.value)
