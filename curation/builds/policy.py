"""Curation policies: a declarative YAML/TOML file that says which records become training shards, and how.

A policy names one or more *consumers* (``sft``, ``rm``, ``ranking``), each reading
one scored view (``scored_sft``, ``scored_pairs``, ``scored_rankings``). Per consumer:

* ``filters``: named SQL boolean expressions over the view's columns; a record is
  kept only if every filter is true (NULL counts as false, as in ``WHERE``). The
  first failing filter is the record's recorded drop reason.
* ``weight``: a SQL expression giving the per-sample loss weight (finite, >= 0, not NULL).
* ``remedies`` (rm only): what to do with pairs of each quality class (methods.md section 3).
* ``label_smoothing`` (sft only): a SQL expression for the UAL epsilon (default: the scored column).
* ``balance_length`` (rm only): reweight kept pairs so that "chosen is longer" carries no weight.
* ``mix``: per-source mixing ratios and caps.

Policy-wide: ``dedup`` (drop near-duplicate records or prompts, semantic duplicates, or keep them),
``split`` (train/eval by a salted hash of the prompt's near-duplicate cluster, so a prompt and its
near copies never land in both), and ``shard_rows``. Files are read with ``yaml.safe_load`` or ``tomllib``; a policy
is data, never code. Every wrong key or type is reported with its location, and
every SQL expression is bound against the view (``check_expressions``) before a
build writes anything.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import duckdb
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.core.errors import StoreError
from curation.core.names import safe_name
from curation.core.safe_yaml import MAX_YAML_BYTES, YAMLRefused, read_yaml_file
from curation.core.safe_yaml import MAX_YAML_NODES as MAX_YAML_NODES
from curation.core.sql import SQLRefused, check_expression

POLICY_VERSION = 1
_CLAUSE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
#: Largest count a policy may give (rows per shard, a cap): beyond it Arrow and orjson overflow.
MAX_COUNT = 2**53

#: consumer -> (canonical kind, scored view it reads)
CONSUMER_VIEWS: dict[str, tuple[str, str]] = {
    "sft": ("sft", "scored_sft"),
    "rm": ("pair", "scored_pairs"),
    "ranking": ("ranking", "scored_rankings"),
}


class PolicyError(ValueError):
    """The policy file is wrong; the message names the file, the key or clause, and the problem."""


class _Strict(BaseModel):
    # allow_inf_nan=False: a ratio of .inf made every share NaN and the build died in min()
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Filter(_Strict):
    """One named filter clause: records where ``where`` is not true are dropped with this name."""

    name: str = Field(description="Short name recorded as the drop reason (letters, digits, _ . -).")
    where: str = Field(description="SQL boolean expression over the consumer's scored view.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _CLAUSE_NAME.fullmatch(v):  # fullmatch: `$` would let a final newline through
            raise ValueError(
                f"filter name {v!r}: use letters, digits, '_', '.', '-' (max 64), starting with a letter"
            )
        return v


class Split(_Strict):
    """Train/eval split by a salted hash of the prompt text of the record's near-duplicate prompt cluster
    (its representative's prompt; the record's own when it is in none): the pairs of one prompt, and of
    its near copies, never appear in both splits."""

    eval_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    salt: str = "curate-split-v1"


class Dedup(_Strict):
    """What to do with non-representative members of duplicate clusters (the near_duplicates view).

    ``near_duplicates``: ``drop`` drops near-duplicate *records*: for rm and ranking a pair (ranking)
    whose prompt is in a near-duplicate prompt cluster and whose responses are near-identical to an
    earlier record's there, so the distinct pairs of one prompt (several judges or completions) are kept;
    for sft a record whose prompt is a near duplicate (an SFT record is its prompt's one target answer).
    ``drop_prompt`` keeps one record per near-duplicate prompt cluster for every consumer (one pair
    per prompt); ``keep`` drops none. Either way the train/eval split follows the prompt cluster."""

    near_duplicates: Literal["drop", "drop_prompt", "keep"] = "drop"
    semantic_duplicates: Literal["drop", "keep"] = "keep"  # embedding clusters (sem_cluster columns)

    def near_level(self, consumer: str) -> Literal["record", "prompt"] | None:
        """Which near-duplicate level ``consumer`` drops (None: keeps them)."""
        if self.near_duplicates == "keep":
            return None
        return "prompt" if self.near_duplicates == "drop_prompt" or consumer == "sft" else "record"


class Mix(_Strict):
    """Per-source mixing: ``ratios`` are target shares of the consumer's records (every source present
    must be listed; 0 removes a source); ``caps`` are hard upper bounds per source, applied after ratios.
    Which records a source keeps is decided by a salted hash of the id (deterministic)."""

    ratios: dict[str, Annotated[float, Field(ge=0.0, le=1e12)]] = Field(default_factory=dict)  # no inf sum
    caps: dict[str, Annotated[int, Field(ge=0, le=MAX_COUNT)]] = Field(default_factory=dict)
    salt: str = "curate-mix-v1"

    @model_validator(mode="after")
    def _ratios(self) -> Mix:
        if self.ratios and not any(r > 0 for r in self.ratios.values()):
            raise ValueError("mix.ratios: at least one ratio must be > 0")
        return self


class Remedies(_Strict):
    """Noise remedies per quality_class of the pair (methods.md section 3). Unscored pairs count as clean."""

    incorrect: Literal["drop", "flip", "soft_label", "keep"] = "flip"
    ambiguous: Literal["soft_label", "keep", "drop"] = "soft_label"
    soft_label_alpha: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    adaptive_margin: bool = True  # margin column = adaptive_margin (else 0.0)


class _Consumer(_Strict):
    filters: list[Filter] = Field(default_factory=list)
    weight: str = "1.0"
    mix: Mix = Field(default_factory=Mix)

    @field_validator("filters")
    @classmethod
    def _unique(cls, v: list[Filter]) -> list[Filter]:
        seen: set[str] = set()
        for f in v:
            if f.name in seen:
                raise ValueError(f"filter name {f.name!r} is used twice")
            seen.add(f.name)
        return v


class SftConsumer(_Consumer):
    label_smoothing: str = "coalesce(label_smoothing, 0.0)"


class RmConsumer(_Consumer):
    remedies: Remedies = Field(default_factory=Remedies)
    #: Reweight the kept pairs of each source and split so that the weighted chosen-longer share
    #: (curation.builds.length_diagnostics) is 0.5 and the mean weight 1, on top of ``weight`` (multiplied,
    #: then renormalised per source): a reward model then cannot learn "longer wins" from the weights.
    balance_length: bool = False


class RankingConsumer(_Consumer):
    pass


class Consumers(_Strict):
    sft: SftConsumer | None = None
    rm: RmConsumer | None = None
    ranking: RankingConsumer | None = None


class Policy(_Strict):
    """A whole policy file."""

    version: Literal[1] = POLICY_VERSION
    name: str = Field(description="Build name: the folder curated/<name>/ in the store.")
    description: str = ""
    consumers: Consumers
    split: Split = Field(default_factory=Split)
    dedup: Dedup = Field(default_factory=Dedup)
    shard_rows: Annotated[int, Field(gt=0, le=MAX_COUNT)] = 50_000

    @field_validator("name")
    @classmethod
    def _safe(cls, v: str) -> str:
        try:
            safe_name(v, "policy name")
        except StoreError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _some_consumer(self) -> Policy:
        if not self.active():
            raise ValueError("consumers: name at least one of sft, rm, ranking")
        return self

    def active(self) -> dict[str, _Consumer]:
        """The consumers this policy builds, in fixed order."""
        return {
            name: getattr(self.consumers, name)
            for name in CONSUMER_VIEWS
            if getattr(self.consumers, name) is not None
        }

    def canonical_json(self) -> bytes:
        """The policy with every default filled in, keys sorted: what the policy hash covers."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()


# ------------------------------------------------------------------- loading
def parse_policy(data: Any, where: str = "policy") -> Policy:
    """Validate a mapping (already parsed from YAML/TOML); every problem is listed with its key path."""
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
            elif e["type"] == "missing":
                msg = "required key is missing"
            got = "" if e["type"] in ("missing",) else f" (got {e.get('input')!r:.80})"
            lines.append(f"  {loc}: {msg}{got}")
        raise PolicyError(f"{where}: {len(lines)} problem(s):\n" + "\n".join(lines)) from None


#: Largest policy file read (the bundled default is 3 KB).
MAX_POLICY_BYTES = MAX_YAML_BYTES


def load_policy(path: str | Path) -> Policy:
    """Read a .yaml/.yml or .toml policy file and validate it: safe loaders only, bounded size and alias
    expansion, and a key given twice is an error (``curation.core.safe_yaml``; tomllib refuses it too)."""
    path = Path(path)
    try:
        if path.suffix.lower() != ".toml":
            return parse_policy(read_yaml_file(path, "policy"), str(path))
        with open(path, "rb") as fh:
            raw = fh.read(MAX_POLICY_BYTES + 1)
        if len(raw) > MAX_POLICY_BYTES:
            raise PolicyError(f"{path}: larger than {MAX_POLICY_BYTES} bytes; a policy is a short file")
        data = tomllib.loads(raw.decode("utf-8"))
    except YAMLRefused as exc:
        raise PolicyError(str(exc)) from None
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise PolicyError(f"{path}: nested too deeply") from None
    return parse_policy(data, str(path))


def bundled_policy(name: str = "default") -> Path:
    """Path of a policy shipped with the package (curation/builds/policies/<name>.yaml)."""
    path = Path(__file__).parent / "policies" / f"{name}.yaml"
    if not path.is_file():
        raise PolicyError(f"no bundled policy {name!r} (have: {', '.join(bundled_policy_names())})")
    return path


def bundled_policy_names() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "policies").glob("*.yaml"))


def resolve_policy(arg: str) -> Path:
    """A file path, or the name of a bundled policy (e.g. ``default``)."""
    p = Path(arg)
    if p.is_file():
        return p
    if p.exists():  # a folder, a pipe (reading it would block for good) or a device
        raise PolicyError(f"policy {arg} is not a regular file (a folder, a pipe or a device)")
    if "/" not in arg and not p.suffix:
        return bundled_policy(arg)
    raise PolicyError(f"policy file {arg} not found")


# ------------------------------------------------------- SQL expression checks
def expressions(policy: Policy) -> list[tuple[str, str, str, str]]:
    """Every SQL expression of the policy: (consumer, clause label, expression, expected type)."""
    out = []
    for cname, c in policy.active().items():
        for i, f in enumerate(c.filters):
            out.append((cname, f"consumers.{cname}.filters[{i}] {f.name!r}", f.where, "boolean"))
        out.append((cname, f"consumers.{cname}.weight", c.weight, "number"))
        if isinstance(c, SftConsumer):
            out.append((cname, f"consumers.{cname}.label_smoothing", c.label_smoothing, "number"))
    return out


_NUMERIC = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|U\w*INT|FLOAT|DOUBLE|DECIMAL.*|REAL)$")


def check_expressions(con: duckdb.DuckDBPyConnection, policy: Policy, relations: dict[str, str]) -> None:
    """Bind every expression against its consumer's relation (a LIMIT 0 query); raise one PolicyError
    listing every clause that names an unknown column, does not parse, or has the wrong type.

    ``relations`` maps consumer -> the relation (view name) the build reads.
    """
    problems = []
    for cname, label, expr, want in expressions(policy):
        try:
            check_expression(expr)  # the sandbox's one check: one expression, no file, no statement
        except SQLRefused as exc:
            problems.append(f"  {label} `{expr}`: {exc.reason}")
            continue
        try:
            desc = con.sql(f"DESCRIBE SELECT ({expr}) AS x FROM {relations[cname]} LIMIT 0").fetchall()
        except duckdb.Error as exc:
            problems.append(f"  {label} `{expr}`: {_first_line(exc)}")
            continue
        ctype = desc[0][1]
        if want == "boolean" and ctype not in ("BOOLEAN", '"NULL"', "NULL"):
            problems.append(f"  {label} `{expr}`: must be a boolean expression, is {ctype}")
        if want == "number" and not _NUMERIC.match(ctype):
            problems.append(f"  {label} `{expr}`: must be numeric, is {ctype}")
    if problems:
        raise PolicyError(
            f"policy {policy.name!r}: {len(problems)} bad expression(s):\n" + "\n".join(problems)
        )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__


def finite_nonneg(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0.0
