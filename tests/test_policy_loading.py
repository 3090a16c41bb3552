"""Reading a policy file is bounded (issue 23 item 10): YAML alias bombs, self-referring aliases, deep
nesting and huge files are refused with a PolicyError naming the file, in milliseconds, before anything
is built from them; ordinary aliases still work."""

from __future__ import annotations

import os
import re
import resource
import time
from pathlib import Path

import pytest
import yaml

from curation.builds import policy as policy_module
from curation.builds.policy import PolicyError, bundled_policy, load_policy
from tests.fixtures.fifos import unblock_fifos


def alias_bomb(levels: int, width: int = 10) -> str:
    """A policy whose description is ``width ** levels`` strings made of aliases of aliases. Before the
    bound, 6 levels (611 bytes) took 5.6 s and 332 MB to refuse, 7 levels (670 bytes) 49.6 s and 2.26 GB."""
    lines = [
        "name: bomb",
        "consumers: {rm: {}}",
        "a0: &a0 [" + ", ".join(['"xxxxxxxxxxxxxxxx"'] * width) + "]",
    ]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append(f"description: *a{levels}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9, 30])
def test_alias_bombs_are_refused_at_once(tmp_path, levels):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels))
    assert path.stat().st_size < 4000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(
        PolicyError, match=rf"bomb\.yaml: its YAML aliases expand to more than {policy_module.MAX_YAML_NODES}"
    ):
        load_policy(path)
    assert time.perf_counter() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


def test_an_alias_inside_itself_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: loop\nconsumers: {rm: {}}\ndescription: &d [1, *d]\n")
    with pytest.raises(PolicyError, match=r"loop\.yaml: .*refer to themselves"):
        load_policy(path)


def test_deep_nesting_and_huge_files_are_refused_by_name(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: deep\nconsumers: {rm: {}}\ndescription: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PolicyError, match=r"deep\.yaml: nested too deeply"):
        load_policy(deep)
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: huge\nconsumers: {rm: {}}\ndescription: '" + "x" * (2 << 20) + "'\n")
    with pytest.raises(PolicyError, match=r"huge\.yaml: larger than"):
        load_policy(huge)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(PolicyError, match=r"binary\.yaml: not UTF-8"):
        load_policy(binary)


def test_ordinary_aliases_still_work_and_the_default_is_far_below_the_bound(tmp_path):
    text = bundled_policy().read_text()
    node_count = sum(1 for _ in _nodes(yaml.compose(text)))
    assert node_count * 10 < policy_module.MAX_YAML_NODES
    path = tmp_path / "shared.yaml"
    path.write_text(
        "name: shared\n"
        'x-filters: &f [{name: not_empty, where: "len(chosen) > 0"}]\n'
        "consumers:\n"
        "  rm: {filters: *f}\n"
    )
    with pytest.raises(PolicyError, match="x-filters: unknown key"):  # aliases pass; the schema still rules
        load_policy(path)
    path.write_text("name: shared\nconsumers:\n  rm:\n    mix: &m {caps: {a: 5}}\n  ranking:\n    mix: *m\n")
    policy = load_policy(path)
    assert policy.consumers.rm.mix.caps == {"a": 5} == policy.consumers.ranking.mix.caps


def _nodes(node):
    yield node
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            yield from _nodes(child)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            yield from _nodes(k)
            yield from _nodes(v)


def test_policy_files_are_read_as_files(tmp_path):
    folder = tmp_path / "a[1]"
    folder.mkdir()
    path = folder / "p?.yaml"
    path.write_text(Path(bundled_policy()).read_text())
    assert load_policy(path).name == "default"


# ------------------------------------------------------------ round three
#: A key given twice: yaml.safe_load kept the last one silently, so the build did something else than
#: the file seems to say (a second `consumers:` replaced the rm block with an sft one: a 0-row build).
REPEATED_KEYS = {
    "name": ("name: a\nname: b\nconsumers: {rm: {}}\n", "'name'", (1, 2)),
    "consumers": (
        'name: a\nconsumers:\n  rm: {weight: "0.0"}\nconsumers:\n  sft: {}\n',
        "'consumers'",
        (2, 4),
    ),
    "weight": ('name: a\nconsumers:\n  rm:\n    weight: "0.0"\n    weight: "1.0"\n', "'weight'", (4, 5)),
    "filter field": (
        'name: a\nconsumers:\n  rm:\n    filters:\n      - name: f\n        where: "true"\n'
        '        where: "false"\n',
        "'where'",
        (6, 7),
    ),
    "flow style": ("name: a\nconsumers: {rm: {}, rm: {weight: '2'}}\n", "'rm'", (2, 2)),
    "mix source": ("name: a\nconsumers:\n  rm:\n    mix: {caps: {s: 1, s: 2}}\n", "'s'", (4, 4)),
}


@pytest.mark.parametrize("case", sorted(REPEATED_KEYS))
def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, case):
    text, key, (first, second) = REPEATED_KEYS[case]
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(
        PolicyError, match=rf"twice\.yaml: key {key} is given twice .*lines {first} and {second}"
    ):
        load_policy(path)


def test_a_key_given_twice_in_toml_is_refused_too(tmp_path):
    path = tmp_path / "twice.toml"
    path.write_text('name = "a"\nname = "b"\n[consumers.rm]\n')
    with pytest.raises(PolicyError, match=r"twice\.toml: not valid TOML"):
        load_policy(path)


def test_merge_keys_and_equal_values_under_different_keys_still_load(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(
        "name: merge\n"
        'x-base: &b {weight: "2.0"}\n'
        "consumers:\n"
        "  rm: {<<: *b, balance_length: true}\n"
        "  ranking: {<<: *b}\n"
    )
    with pytest.raises(PolicyError, match="x-base: unknown key"):  # the merge passes; the schema rules
        load_policy(path)


#: Values that validated and then crashed the build (tracebacks: OverflowError from Arrow, orjson's
#: "Integer exceeds 64-bit range" after the shards were written, min() of an empty sequence), or
#: a filter name whose final newline `$` let through.
BAD_VALUES = {
    "shard_rows 10**30": ("shard_rows: 1000000000000000000000000000000\nconsumers: {rm: {}}\n", "shard_rows"),
    "cap 10**30": (
        "consumers: {rm: {mix: {caps: {dpo_en_demo: 1000000000000000000000000000000}}}}\n",
        "consumers.rm.mix.caps.dpo_en_demo",
    ),
    "ratio inf": (
        "consumers: {rm: {mix: {ratios: {dpo_en_demo: .inf}}}}\n",
        "consumers.rm.mix.ratios.dpo_en_demo",
    ),
    "ratio nan": (
        "consumers: {rm: {mix: {ratios: {dpo_en_demo: .nan}}}}\n",
        "consumers.rm.mix.ratios.dpo_en_demo",
    ),
    "ratios whose sum overflows": (
        "consumers: {rm: {mix: {ratios: {a: 1.0e+308, b: 1.0e+308}}}}\n",
        "consumers.rm.mix.ratios.a",
    ),
    "filter name with a final newline": (
        'consumers: {rm: {filters: [{name: "ok\\n", where: "true"}]}}\n',
        "consumers.rm.filters.0.name",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_that_crashed_the_build_are_refused_by_key(tmp_path, case):
    text, key = BAD_VALUES[case]
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\n" + text)
    with pytest.raises(PolicyError, match=rf"bad\.yaml: \d problem.*\n  {re.escape(key)}:"):
        load_policy(path)


def test_train_config_and_deployments_file_are_read_by_the_same_bounded_reader(tmp_path):
    """`curate train --config` and prefect.yaml went through plain yaml.safe_load: a 350-byte config of
    nested aliases took 11 s and 500 MB, and a repeated option won silently."""
    from curation.cli.train import parse_config
    from flows.deploy import DeploymentFileError, load_specs

    parse_config("rm", ["--shards", "x", "--model", "x"])  # its imports (seconds) before the clock starts

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(7))
    twice = tmp_path / "twice.yaml"
    twice.write_text("learning_rate: 0.1\nlearning_rate: 0.00001\n")
    for path, match in ((bomb, "aliases expand"), (twice, "'learning_rate' is given twice")):
        started = time.perf_counter()
        with pytest.raises(ValueError, match=match):
            parse_config("rm", ["--config", str(path), "--shards", "x", "--model", "x"])
        assert time.perf_counter() - started < 2.0  # 7 levels: 49.6 s before
        with pytest.raises(DeploymentFileError, match=match):
            load_specs(path)
    pipe = tmp_path / "pipe.yaml"  # reading a FIFO waited for a writer for good
    os.mkfifo(pipe)
    unblock_fifos([pipe])
    with pytest.raises(ValueError, match="is not a regular file"):
        parse_config("rm", ["--config", str(pipe), "--shards", "x", "--model", "x"])
    with pytest.raises(DeploymentFileError, match="is not a regular file"):
        load_specs(pipe)
    assert load_specs()  # the repository's prefect.yaml still reads


def test_a_policy_that_is_a_pipe_or_a_folder_is_named_as_such(tmp_path):
    """`curate build --policy` given a FIFO or a folder said "not found" (a .toml pipe would block)."""
    from curation.builds.policy import resolve_policy

    pipe = tmp_path / "pipe.toml"
    os.mkfifo(pipe)
    unblock_fifos([pipe])
    for odd in (pipe, tmp_path):
        with pytest.raises(PolicyError, match="is not a regular file"):
            resolve_policy(str(odd))
