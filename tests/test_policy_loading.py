"""Reading a policy file is bounded (issue 23 item 10): YAML alias bombs, self-referring aliases, deep
nesting and huge files are refused with a PolicyError naming the file, in milliseconds, before anything
is built from them; ordinary aliases still work."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest
import yaml

from curation.builds import policy as policy_module
from curation.builds.policy import PolicyError, bundled_policy, load_policy


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
