"""`curate report`: a self-contained HTML file, rendered in headless Chromium with the network cut off."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from curation.builds.build import build
from curation.builds.policy import bundled_policy, load_policy
from curation.builds.report import render_report
from tests.fixtures.stores import SCORED_STORE_SCORERS, ingest, score

FIGURES = (
    "margin_by_class",
    "reward_vs_length",
    "length_diff_vs_label",
    "chosen_longer",
    "groups",
    "epsilon",
    "source_mix",
    "before_after",
)
#: figures whose data comes from scorers every checkout has, or from ingest and the build
ALWAYS_FILLED = ("length_diff_vs_label", "chosen_longer", "source_mix", "before_after")


def _sections(page: str) -> dict[str, tuple[int, str]]:
    out = {}
    for chunk in page.split('<section class="figure"')[1:]:
        m = re.match(r' data-figure="(\w+)" data-points="(\d+)"', chunk)
        assert m, chunk[:200]
        out[m.group(1)] = (int(m.group(2)), chunk)
    return out


def _chromium(*args: str, tmp_path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # no host resolves: the page must not need the network
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=20000",
    ]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=180, check=True)


def test_report_is_self_contained_with_every_figure(scored_store, tmp_path):
    store, _ = scored_store
    build(store, load_policy(bundled_policy()))
    out = render_report(store, tmp_path / "r" / "report.html")
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=", page), "every script must be inline"
    assert page.count("Plotly.newPlot") == len(FIGURES)
    secs = _sections(page)
    assert list(secs) == list(FIGURES)
    for key in ALWAYS_FILLED:
        assert secs[key][0] > 0, f"{key} has no data"
    # the length figures use the one chosen-longer definition: characters of the responses, ties left out
    pairs = store.read("pairs").to_pylist()
    diffs = [len(p["chosen"][-1]["content"]) - len(p["rejected"][-1]["content"]) for p in pairs]
    share = sum(d > 0 for d in diffs) / sum(d != 0 for d in diffs)
    assert f"chosen is longer in {100 * share:.1f} % of pairs (ties left out)" in page
    # the chosen-longer figure: raw and rm-shard bars per source (weighted and not), and how to read it
    points, chosen_longer = secs["chosen_longer"]
    assert points == 2 * 3  # two sources x (raw, rm shards, rm shards weighted); no quality classes yet
    assert "rm shards, weighted" in chosen_longer and "ties are left out of every share" in chosen_longer


@pytest.mark.slow
def test_demo_report_renders_in_headless_chromium(store, demo_data, tmp_path):
    """The bundled demo data through ingest -> score -> build -> report, rendered and screenshotted."""
    # every demo file whose layout is detected (gsm8k/test.jsonl needs a column mapping)
    files = sorted(p for p in demo_data.rglob("*") if p.suffix in (".json", ".jsonl", ".gz"))
    ingest(store, [p for p in files if p.name != "test.jsonl"])
    score(store, SCORED_STORE_SCORERS)
    build(store, load_policy(bundled_policy()))
    report = render_report(store, tmp_path / "demo-report.html")

    dom = _chromium("--dump-dom", report.as_uri(), tmp_path=tmp_path).stdout
    secs = _sections(dom)
    assert list(secs) == list(FIGURES)
    for key, (points, html) in secs.items():
        # plotly drew the figure: its container and the SVG it renders into are in the live DOM
        assert 'class="plot-container plotly"' in html, f"{key} was not rendered"
        assert 'class="main-svg"' in html, f"{key} has no SVG"
        if key in ALWAYS_FILLED:
            assert points > 0
    assert dom.count('class="plot-container plotly"') == len(FIGURES)

    png = tmp_path / "demo-report.png"
    _chromium("--window-size=1400,4000", f"--screenshot={png}", report.as_uri(), tmp_path=tmp_path)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    print(f"report screenshot: {png}")
