"""The shared length features: antisymmetric under a swap, and they see length and markdown in real answers."""

from __future__ import annotations

import json

import numpy as np

from curation.core.length_features import (
    FEATURE_NAMES,
    markdown_counts,
    markdown_matrix,
    pair_length_features,
)


def test_features_flip_sign_when_the_pair_is_swapped():
    rng = np.random.default_rng(0)
    lc, lr = rng.integers(0, 900, 200), rng.integers(0, 900, 200)
    mc, mr = rng.integers(0, 6, (200, 5)), rng.integers(0, 6, (200, 5))
    f = pair_length_features(lc, lr, mc, mr)
    assert f.shape == (200, len(FEATURE_NAMES))
    np.testing.assert_allclose(pair_length_features(lr, lc, mr, mc), -f)
    same = pair_length_features(lc, lc, mc, mc)
    assert not same.any()  # a pair whose responses look alike carries no length cue


def test_markdown_counts_on_real_verbose_answers(shared_data):
    rows = json.loads((shared_data / "alpaca-eval/gpt-3.5-turbo-1106_verbose.annotations.json").read_text())
    texts = [r["output_2"] for r in rows[:200]]
    m = markdown_matrix(texts)
    # verbose GPT-3.5 answers use numbered lists; a plain sentence has none of these structures
    assert (m[:, 0] > 0).mean() > 0.3
    assert markdown_counts("A plain sentence, no structure.") == (0, 0, 0, 0, 0)
    assert markdown_counts("# Title\n1. one\n2. two\n- three\n```py\nx\n```\n| a | b |\n**bold**") == (
        3,
        1,
        1,
        1,
        1,
    )
