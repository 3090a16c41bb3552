"""uncertainty (UAL) on real Alpaca and GSM8K SFT records: rubric-embedding, judge, entropy, column."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from scipy.stats import rankdata

from curation import catalog
from curation.core.models import ModelSpec
from curation.scoring import run_scorer
from curation.scoring.cache import ResultSpec, ids_fingerprint
from curation.scoring.runner import CausalLMEntropy, RunnerConfig
from curation.scoring.texts import prompt_of_sft, render
from curation.scoring.uncertainty import rank_normalise, ual_smoothing
from tests.fixtures.stores import build_store


@pytest.fixture(scope="module")
def sft_store(tmp_path_factory, shared_data):
    return build_store(tmp_path_factory.mktemp("sft"), shared_data, hh=0, alpaca=25, gsm8k=25)


def rows(st, q):
    with contextlib.closing(catalog.connect(st)) as con:
        return con.sql(q).to_arrow_table().to_pylist()


def test_ual_smoothing_mean_and_cap():
    u = np.r_[np.full(10, 1.0), np.full(90, 0.001)]
    eps = ual_smoothing(u, mean_epsilon=0.3, cap=0.99)
    assert abs(eps.mean() - 0.3) <= 1e-3 and eps.max() <= 0.99
    assert np.all(np.diff(eps[np.argsort(u)]) >= -1e-12)  # still monotone in u
    assert np.allclose(ual_smoothing(np.array([0.2, 0.4])), [0.2 / 3, 0.4 / 3])
    assert np.allclose(rank_normalise(np.array([3.0, 1.0, 2.0])), [1.0, 0.0, 0.5])


def test_rubric_embedding_ranks_gsm8k_below_alpaca(sft_store):
    s = run_scorer(sft_store, "uncertainty", progress=False)
    r = rows(sft_store, "SELECT source, uncertainty, label_smoothing, uncertainty_source FROM scored_sft")
    assert len(r) == s.records and all(x["uncertainty_source"] == "rubric-embedding" for x in r)
    u = {src: np.mean([x["uncertainty"] for x in r if x["source"] == src]) for src in ("gsm8k", "alpaca")}
    assert u["gsm8k"] + 0.1 < u["alpaca"], u
    eps = np.array([x["label_smoothing"] for x in r])
    assert abs(eps.mean() - 0.1) <= 1e-3 and eps.max() <= 0.99
    again = run_scorer(sft_store, "uncertainty", progress=False)
    assert again.skipped and again.computed == 0


class _Judge(BaseHTTPRequestHandler):
    calls: list[str] = []
    fail_first = True

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body["model"])
        if type(self).fail_first:
            type(self).fail_first = False
            self.send_response(503)
            self.end_headers()
            return
        assert body["messages"][0]["role"] == "system" and "0 to 99" in body["messages"][0]["content"]
        convo = body["messages"][1]["content"]
        score = "12" if any(ch.isdigit() for ch in convo) else "Score: 88"
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": score}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_judge_over_local_openai_compatible_server(sft_store):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        s = run_scorer(
            sft_store,
            "uncertainty",
            source="judge",
            judge_model="judge-x",
            base_url=url,
            concurrency=4,
            retries=2,
            progress=False,
        )
        assert len(_Judge.calls) == s.records + 1  # one 503, retried
        r = rows(sft_store, "SELECT messages, uncertainty FROM scored_sft")
        for x in r:
            digits = any(
                ch.isdigit() for ch in "\n".join(f"{m['role']}: {m['content']}" for m in x["messages"])
            )
            assert x["uncertainty"] == pytest.approx((12 if digits else 88) / 99)
        again = run_scorer(
            sft_store, "uncertainty", source="judge", judge_model="judge-x", base_url=url, progress=False
        )
        assert again.computed == 0 and len(_Judge.calls) == s.records + 1  # cached: no new request
    finally:
        server.shutdown()


def test_judge_unreachable_names_the_record(tmp_path, shared_data):
    from curation.scoring.judge import JudgeError

    st = build_store(tmp_path, shared_data, hh=0, alpaca=2)
    with pytest.raises(JudgeError, match=r"record [0-9a-f]{32}: judge at .* failed after 2 attempts"):
        run_scorer(
            st,
            "uncertainty",
            source="judge",
            judge_model="m",
            base_url="http://127.0.0.1:9/v1",
            retries=1,
            timeout_s=2,
            progress=False,
        )


def test_entropy_of_tiny_causal_lm(sft_store, tiny_lm):
    s = run_scorer(
        sft_store,
        "uncertainty",
        source="entropy",
        models=[str(tiny_lm)],
        max_length=128,
        progress=False,
        device="cpu",
    )
    r = rows(sft_store, "SELECT messages, uncertainty FROM scored_sft")
    u = np.array([x["uncertainty"] for x in r])
    assert s.records == len(u) and len(np.unique(u)) > len(u) // 2
    # u is the rank of each record's mean response-token entropy, computed here one record at a time
    lm = CausalLMEntropy(ModelSpec(str(tiny_lm)), RunnerConfig(device="cpu", max_length=128))
    prompts = [render(lm.tokenizer, prompt_of_sft(x["messages"])) for x in r]
    fulls = [render(lm.tokenizer, x["messages"]) for x in r]
    entropy = np.array([lm.entropy([p], [f])[0] for p, f in zip(prompts, fulls, strict=True)])
    assert u == pytest.approx((rankdata(entropy) - 1) / (len(u) - 1))


def test_column_source_and_its_errors(sft_store):
    expr = "length(messages[1].content) % 100"
    s = run_scorer(sft_store, "uncertainty", source="column", column=expr, column_scale=99, progress=False)
    r = rows(sft_store, "SELECT id, messages, uncertainty FROM scored_sft")
    for x in r[:5]:
        assert x["uncertainty"] == pytest.approx((len(x["messages"][0]["content"]) % 100) / 99)
    # the result key is built from the documented params (a change would orphan existing results)
    params = {"source": "column", "mean_epsilon": 0.1, "cap": 0.99, "column": expr, "column_scale": 99}
    spec = ResultSpec("uncertainty", "1", "column", params, ids_fingerprint([x["id"] for x in r]))
    assert s.key == spec.key
    with pytest.raises(ValueError, match="outside \\[0, 1\\].*first id [0-9a-f]{32}"):
        run_scorer(sft_store, "uncertainty", source="column", column=expr, progress=False)
