"""Policy files: validation of every key and type, safe loading, and SQL clauses checked before any write."""

from __future__ import annotations

import json
import textwrap

import pytest

from curation.builds.build import build
from curation.builds.policy import PolicyError, bundled_policy, load_policy, parse_policy


def _write(tmp_path, text: str, name: str = "p.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_default_policy_is_valid_and_its_hash_ignores_formatting(tmp_path):
    pol = load_policy(bundled_policy())
    assert set(pol.active()) == {"sft", "rm", "ranking"}
    assert pol.consumers.rm.remedies.incorrect == "flip" and pol.consumers.rm.remedies.soft_label_alpha == 0.1
    # the same policy as TOML (no comments, defaults left out) has the same canonical hash
    toml = _write(
        tmp_path,
        """
        name = "default"
        description = "x"
        [consumers.sft]
        filters = [{name = "has_answer", where = "length(messages[-1].content) > 0"}]
        [consumers.rm]
        filters = [{name = "not_length_explained", where = "NOT coalesce(length_explained, false)"}]
        weight = "coalesce(group_weight, 1.0)"
        balance_length = true
        [consumers.ranking]
        filters = [{name = "two_candidates", where = "len(candidates) >= 2"}]
        """,
        "p.toml",
    )
    other = load_policy(toml)
    assert other.sha256() != pol.sha256()  # the description differs
    data = json.loads(other.canonical_json())
    data["description"] = pol.description
    assert parse_policy(data).sha256() == pol.sha256()


def test_every_wrong_key_and_type_is_named(tmp_path):
    p = _write(
        tmp_path,
        """
        name: demo
        shard_rows: lots
        consumers:
          rm:
            remdies: {incorrect: flip}
            weight: 2
          sft:
            filters:
              - {name: ok, where: "true", extra: 1}
        split: {eval_fraction: 1.5}
        """,
    )
    with pytest.raises(PolicyError) as e:
        load_policy(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "shard_rows" in msg
    assert "consumers.rm.remdies: unknown key" in msg
    assert "consumers.rm.weight" in msg
    assert "consumers.sft.filters.0.extra: unknown key" in msg
    assert "split.eval_fraction" in msg
    assert msg.count("\n  ") >= 5


def test_remedy_values_are_checked_per_class():
    with pytest.raises(PolicyError, match=r"consumers\.rm\.remedies\.ambiguous"):
        parse_policy({"name": "x", "consumers": {"rm": {"remedies": {"ambiguous": "flip"}}}})
    with pytest.raises(PolicyError, match="at least one of sft, rm, ranking"):
        parse_policy({"name": "x", "consumers": {}})
    with pytest.raises(PolicyError, match="used twice"):
        parse_policy(
            {
                "name": "x",
                "consumers": {"sft": {"filters": [{"name": "a", "where": "1"}, {"name": "a", "where": "2"}]}},
            }
        )
    with pytest.raises(PolicyError, match="policy name"):
        parse_policy({"name": "../escape", "consumers": {"sft": {}}})


def test_yaml_cannot_execute_code(tmp_path):
    p = _write(tmp_path, 'name: !!python/object/apply:os.system ["echo pwned"]\nconsumers: {sft: {}}\n')
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(p)


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ({"filters": [{"name": "typo", "where": "len_chosn > 10"}]}, ["filters[0] 'typo'", "len_chosn"]),
        ({"filters": [{"name": "syntax", "where": "margin >"}]}, ["filters[0] 'syntax'", "syntax error"]),
        ({"filters": [{"name": "notbool", "where": "len_chosen + 1"}]}, ["must be a boolean"]),
        ({"weight": "'heavy'"}, ["consumers.rm.weight", "must be numeric"]),
        ({"weight": "1; DROP VIEW pairs"}, ["consumers.rm.weight", "more than one statement"]),
        (
            {"filters": [{"name": "files", "where": "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0"}]},
            ["'files'", "table function 'read_csv' is not allowed"],
        ),
    ],
)
def test_bad_expression_fails_before_any_shard_is_written(scored_store, clause, expected):
    store, _ = scored_store
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"]["rm"].update(clause)
    with pytest.raises(PolicyError) as e:
        build(store, parse_policy(data))
    for piece in expected:
        assert piece in str(e.value)
    assert not (store.root / "curated").exists()
    assert not list(store.root.glob(".staging/*"))


def test_weight_that_is_null_for_kept_rows_is_refused_with_examples(scored_store):
    store, _ = scored_store
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"]["rm"]["weight"] = "CASE WHEN len_chosen > 50 THEN NULL ELSE 1.0 END"
    with pytest.raises(
        PolicyError, match=r"consumers\.rm\.weight .* NULL.* kept record\(s\), e\.g\. [0-9a-f]{32}"
    ):
        build(store, parse_policy(data))
    assert not (store.root / "curated").exists()


def test_near_duplicate_levels_and_balance_length_keys(tmp_path):
    pol = load_policy(bundled_policy())
    assert pol.dedup.near_duplicates == "drop" and pol.consumers.rm.balance_length is True
    # drop: rm and ranking by record (pair), sft by prompt; drop_prompt: every consumer by prompt
    assert [pol.dedup.near_level(c) for c in ("sft", "rm", "ranking")] == ["prompt", "record", "record"]
    old_style = _write(
        tmp_path,
        """
        name: old
        dedup: {near_duplicates: keep}
        consumers: {rm: {weight: "1.0"}}
        """,
    )
    old = load_policy(old_style)  # a policy file from before both keys stays valid, balance off
    assert old.dedup.near_level("rm") is None and old.consumers.rm.balance_length is False
    by_prompt = parse_policy(
        {"name": "p", "dedup": {"near_duplicates": "drop_prompt"}, "consumers": {"rm": {}}}
    )
    assert [by_prompt.dedup.near_level(c) for c in ("sft", "rm", "ranking")] == ["prompt"] * 3
    with pytest.raises(PolicyError, match=r"dedup\.near_duplicates: Input should be 'drop', 'drop_prompt'"):
        parse_policy({"name": "p", "dedup": {"near_duplicates": "drop_pair"}, "consumers": {"rm": {}}})
    with pytest.raises(PolicyError, match=r"consumers\.sft\.balance_length: unknown key"):
        parse_policy({"name": "p", "consumers": {"sft": {"balance_length": True}}})


@pytest.mark.parametrize(
    ("clause", "label", "reason"),
    [
        (
            {"weight": "9223372036854775807::HUGEINT * 100000000000000000000"},
            "consumers.rm.weight",
            "Overflow in multiplication",
        ),
        (
            {
                "filters": [
                    {"name": "fine", "where": "true"},
                    {"name": "boom", "where": "cast(source_row::VARCHAR || 'x' AS INTEGER) > 0"},
                ]
            },
            "consumers.rm.filters[1] 'boom'",
            "Could not convert string",
        ),
        (
            {"weight": "CASE WHEN len(chosen) > 0 THEN error('bad row') ELSE 1 END"},
            "consumers.rm.weight",
            "bad row",
        ),
    ],
)
def test_a_clause_that_binds_but_fails_on_the_data_is_named(scored_store, clause, label, reason):
    """Round three: a clause that passes the bind check but fails while the build runs it (an overflow, a
    cast of some rows, error()) gave a DuckDB traceback; now a PolicyError naming the clause, nothing written."""
    store, _ = scored_store
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"]["rm"].update(clause)
    with pytest.raises(PolicyError) as e:
        build(store, parse_policy(data))
    msg = str(e.value)
    assert f"{label} `" in msg and "fails on the data" in msg and reason in msg, msg
    assert "LINE 1" not in msg
    assert not (store.root / "curated").exists()
    assert not list(store.root.glob(".staging/*"))
