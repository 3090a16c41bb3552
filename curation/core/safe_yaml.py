"""The one YAML reader for files a user gives (policies, `curate train --config`, prefect.yaml).

``yaml.safe_load`` builds no objects from tags, but it still (1) expands aliases without a bound: a
350-byte file of nested aliases took 11 s and 500 MB (issue 23, each further level x10), (2) lets a
repeated key win silently: ``weight: "0.0"`` then ``weight: "1.0"`` in one mapping, or a second
``consumers:`` block that replaced the first, built something else than the file seems to say, and (3)
dies with a RecursionError on deep nesting. Here each is a ``YAMLRefused`` naming the file and the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: Largest YAML file read (the bundled default policy is 3 KB).
MAX_YAML_BYTES = 1 << 20
#: Most YAML nodes a document may have once every alias is expanded (the default policy has 74).
MAX_YAML_NODES = 10_000
_MERGE = "tag:yaml.org,2002:merge"


class YAMLRefused(ValueError):
    """A YAML file that is not read: the message names the file and why."""


def read_yaml_file(path: str | Path, what: str = "YAML file") -> Any:
    """The document of a UTF-8 YAML file of at most ``MAX_YAML_BYTES`` (see ``load_yaml``)."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read for good
        raise YAMLRefused(f"{what} {path} is not a regular file (a folder, a pipe or a device)")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise YAMLRefused(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise YAMLRefused(f"{path}: larger than {MAX_YAML_BYTES} bytes; a {what} is a short file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YAMLRefused(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return load_yaml(text, path)


def load_yaml(text: str, where: str | Path = "YAML") -> Any:
    """``yaml.safe_load(text)``, refusing before anything is built: aliases that expand past
    ``MAX_YAML_NODES`` nodes (or refer to themselves), a key repeated in one mapping, more than one
    document, and nesting too deep to read. ``where`` names the file in the message."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > MAX_YAML_NODES:
            raise YAMLRefused(
                f"{where}: its YAML aliases expand to more than {MAX_YAML_NODES} values (or refer to "
                "themselves); write it out without nested aliases"
            )
        _refuse_repeated_keys(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YAMLRefused(f"{where}: not valid YAML: {exc}") from None
    except RecursionError:
        raise YAMLRefused(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes under ``node`` with every alias expanded (each shared node counted where it is used)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:  # an alias inside the node it names: endless
        return MAX_YAML_NODES + 1
    open_.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, sizes, open_)
            if size > MAX_YAML_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_)
            if size > MAX_YAML_NODES:
                break
    open_.discard(key)
    sizes[key] = size
    return size


def _refuse_repeated_keys(root: yaml.Node, where: str | Path) -> None:
    """A key given twice in one mapping (as written: same tag and text) is an error, not "last wins"."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[tuple[str, str], yaml.Node] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE:
                    first = keys.setdefault((k.tag, k.value), k)
                    if first is not k:
                        raise YAMLRefused(
                            f"{where}: key {k.value!r} is given twice in one mapping (lines "
                            f"{first.start_mark.line + 1} and {k.start_mark.line + 1}); YAML would keep "
                            "only the last silently: remove one"
                        )
                stack.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
