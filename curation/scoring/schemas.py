"""Arrow schemas of the scorer results that the scored_* views join to their records."""

from __future__ import annotations

import pyarrow as pa

REWARD_MARGIN_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("reward_chosen", pa.float64()),  # mean over models
        ("reward_rejected", pa.float64()),
        ("margin", pa.float64()),  # preference strength mu, length-controlled (reward_margin.py)
        ("margin_raw", pa.float64()),  # mean_m (r_m(chosen) - r_m(rejected)), not controlled
        ("margin_std", pa.float64()),  # sigma over models (0 for one model)
        ("n_models", pa.int32()),
        ("quality_class", pa.string()),  # incorrect | ambiguous | clean
        ("adaptive_margin", pa.float64()),  # margin inside the sigmoid, >= 0
        ("judge_swap_inconsistent", pa.bool_()),  # judge backend: the two orders disagree (else NULL)
    ]
)

LENGTH_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("len_prompt", pa.int32()),
        ("len_chosen", pa.int32()),
        ("len_rejected", pa.int32()),
        ("len_diff", pa.int32()),
        ("chosen_longer", pa.bool_()),
    ]
)

SPURIOUS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("group_id", pa.int32()),  # 2 * y + z, y = chosen longer, z = Q-Diversity pseudo-attribute
        ("group_weight", pa.float64()),  # group-balanced weight, mean 1 over the scored pairs
        ("feat_len_bucket", pa.int32()),  # longer response: 0 (<64 tokens), 1 (<128), 2 (<256), 3
        ("feat_len_sign", pa.int32()),  # sign of len_chosen - len_rejected
        ("feat_refusal_chosen", pa.bool_()),
        ("feat_refusal_rejected", pa.bool_()),
        ("feat_list_chosen", pa.bool_()),  # lists, headings, code fences, tables
        ("feat_list_rejected", pa.bool_()),
        ("feat_overlap_chosen", pa.float64()),  # word-set Jaccard with the prompt's last user turn
        ("feat_overlap_rejected", pa.float64()),
        ("feat_source", pa.string()),
        ("feat_emb_cluster", pa.int32()),  # k-means cluster of the prompt embedding
        ("feat_qdiv", pa.int32()),  # Q-Diversity pseudo-attribute z
    ]
)

UNCERTAINTY_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("uncertainty", pa.float64()),  # u in [0, 1]
        ("label_smoothing", pa.float64()),  # UAL epsilon, dataset mean = target, cap 0.99
        ("uncertainty_source", pa.string()),
    ]
)

SEMANTIC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("kind", pa.string()),
        ("sem_cluster", pa.string()),  # id of the cluster's representative
        ("sem_representative", pa.bool_()),
        ("sem_similarity", pa.float64()),  # cosine to the representative
    ]
)
