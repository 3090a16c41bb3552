"""The scorer contract: one class per scorer, one registry, one runner.

A scorer is a ``Scorer`` subclass in one file. It declares its ``name``, ``version``, the record
``kinds`` it reads, a ``Config`` dataclass (each field an ``option(default, help)`` of
curation/core/options.py, defaults cited in the help, TRL's config style), its ``result_schema`` and
which scored views join it. Defining the class registers it: the registry gives ``curate score``'s scorer list, the ``scored_*`` view joins
(curation/scoring/views.py) and the build's contract columns (curation/builds/build.py).

Per-record scorers implement ``fingerprint(config)`` (the model's identity), ``items(records)`` (what a
chunk computes on, picklable), ``compute(batch) -> table`` (pure: no store; the value columns of
``cache_schema``, one row per item) and, when the result needs the whole set, ``finalize(table)``.
The shared ``run`` owns the writer lock, loading the records and committing the result; its default
``score`` runs the per-record cache (chunks, resume, data-parallel workers through ``cached_compute``) and
``finalize``. Scorers whose work does not fit that shape (cross-fitting, clustering, an LLM judge)
override ``score`` and still route their per-record model work through ``cached_compute`` with a
``ChunkTask``, so ``--workers`` applies to it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from curation.scoring.base import ScoreSummary, Timer, add_stats
from curation.scoring.task import ChunkTask

if TYPE_CHECKING:
    from curation.core.store import Store
    from curation.scoring.cache import ResultSpec


#: name -> scorer class, in registration order; ``register`` fills it.
REGISTRY: dict[str, type[Scorer]] = {}

_DUCKDB_TYPES = {
    pa.float64(): "DOUBLE",
    pa.float32(): "FLOAT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
}


@dataclasses.dataclass
class ScoreRun:
    """What ``Scorer.score`` works on: the store, the loaded records of each kind, the summary its cache
    stats go to, and the run's options (``chunk_size`` None: the scorer's own)."""

    store: Store
    by_kind: dict[str, list[dict]]
    summary: ScoreSummary
    progress: bool = True
    chunk_size: int | None = None


#: What ``Scorer.score`` returns for ``commit``: (result spec, table or None when that result exists, report).
Outcome = tuple["ResultSpec", pa.Table | None, dict]


@dataclasses.dataclass
class NoConfig:
    """A scorer without options."""


class Scorer(ChunkTask):
    """Base class of every scorer (see the module docstring)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    kinds: ClassVar[tuple[str, ...]] = ("pair",)
    Config: ClassVar[type] = NoConfig
    result_schema: ClassVar[pa.Schema | None] = None  # id + the columns the views show
    #: view -> the record kind whose result rows it joins (None: all rows, joined on id)
    views: ClassVar[dict[str, str | None]] = {}
    view_columns: ClassVar[tuple[str, ...] | None] = None  # None: every result column but id
    contract_columns: ClassVar[tuple[str, ...] | None] = None  # what the build relies on (None: view_columns)
    whole_set: ClassVar[bool] = False  # the result needs every record (a global step after the model work)
    in_all: ClassVar[bool] = True  # `curate score all` runs it
    order: ClassVar[int] = 100  # position of its columns in the views (and in `curate score all`)
    all_order: ClassVar[int | None] = None  # position in `curate score all` when it differs from ``order``
    cache_name: ClassVar[str | None] = None  # the per-record cache's name (None: the scorer's)
    chunk_size: ClassVar[int] = 512

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def __init_subclass__(cls, register_now: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name and register_now:  # a class with a name is a scorer: defining it registers it
            register(cls)

    # ------------------------------------------------ per-record model work
    def fingerprint(self) -> str:
        """The identity of the model (or rule) behind the values: it keys the cache and the result."""
        return self.name

    def cache_params(self) -> dict:
        """The config fields that change per-record values (they key the cache)."""
        return {}

    def result_params(self) -> dict:
        """Everything that keys the result (default: the whole config)."""
        return dataclasses.asdict(self.config)

    def cache_schema(self) -> pa.Schema:
        """id + the per-record values ``compute`` returns (default: the result schema)."""
        return self.result_schema

    def items(self, records: list[dict]) -> list:
        """What ``compute`` works on, one picklable item per record (default: the records)."""
        return records

    def order_key(self, records: list[dict]) -> Sequence[float] | None:
        """Sort key of the records to compute (similar lengths together); None: by id."""
        return None

    def compute(self, batch: list) -> pa.Table:
        """Values of one chunk of items (the columns of ``cache_schema`` without id); pure."""
        raise NotImplementedError

    def __call__(self, items: list) -> pa.Table:
        return self.compute(items)

    def finalize(self, table: pa.Table) -> tuple[pa.Table, dict]:
        """(result table with ``result_schema``, report) from the per-record values of every record."""
        return table.select(self.result_schema.names).cast(self.result_schema), {}

    # ------------------------------------------------------------ running
    def run(
        self, store: Store, *, where: str | None = None, progress: bool = True, chunk_size: int | None = None
    ) -> ScoreSummary:
        """Under the writer lock: load the records of ``load_kinds()``, ``score`` them, ``commit``.
        ``chunk_size``: records per cache chunk (the unit of resume and of work for a worker)."""
        from curation.scoring.texts import load_records

        summary = ScoreSummary(self.name, "", 0)
        with Timer() as t, store.writer_lock(f"score {self.name}"):
            by_kind = {kind: load_records(store, kind, where) for kind in self.load_kinds()}
            summary.records = sum(map(len, by_kind.values()))
            out = self.score(ScoreRun(store, by_kind, summary, progress, chunk_size))
            if out is not None:
                self.commit(store, summary, *out)
        summary.seconds = t.seconds
        return summary

    def load_kinds(self) -> tuple[str, ...]:
        """The record kinds ``run`` loads (a config's ``kinds`` field narrows ``kinds``)."""
        kinds = getattr(self.config, "kinds", self.kinds)
        kinds = tuple(k.strip() for k in kinds.split(",")) if isinstance(kinds, str) else tuple(kinds)
        if not kinds or not set(kinds) <= set(self.kinds):
            raise ValueError(f"{self.name}: kinds {list(kinds)!r}: choose among {', '.join(self.kinds)}")
        return kinds

    def score(self, run: ScoreRun) -> Outcome | None:
        """(result spec, table, report) of the loaded records; ``commit`` writes it. The default: the
        per-record cache over ``compute`` (in-process or on the workers), then ``finalize``. A whole-set
        scorer overrides it, routes its model work through ``cached_compute`` and adds the stats to
        ``run.summary``; it returns table None when the result for this spec exists already, and None
        itself when there is nothing to commit."""
        from curation.scoring.cache import CacheSpec, ResultSpec, cached_compute, ids_fingerprint

        records = [r for recs in run.by_kind.values() for r in recs]
        ids = [r["id"] for r in records]
        fp = self.fingerprint()
        values, stats = cached_compute(
            run.store,
            CacheSpec(self.cache_name or self.name, self.version, fp, self.cache_params()),
            ids,
            schema=self.cache_schema(),
            order=self.order_key(records),
            chunk_size=run.chunk_size or self.chunk_size,
            progress=run.progress,
            desc=self.name,
            task=self,
            items=self.items(records),
        )
        add_stats(run.summary, stats)
        table, report = self.finalize(values)
        return (
            ResultSpec(self.name, self.version, fp, self.result_params(), ids_fingerprint(ids)),
            table,
            report,
        )

    def commit(
        self, store: Store, summary: ScoreSummary, spec: ResultSpec, table: pa.Table | None, report: dict
    ) -> None:
        """Write the result and make it active; a result with this key that exists already (and no value
        computed in this run) is only made active again."""
        from curation.scoring.cache import activate, commit_result, result_done

        summary.key, summary.report = spec.key, report
        if table is None or (summary.computed == 0 and result_done(store, spec)):
            activate(store, self.name, spec.key)
            summary.skipped = True
        else:
            commit_result(store, spec, table, report=report)

    @classmethod
    def run_with(cls, store: Store, **params: Any) -> ScoreSummary:
        """Run with ``params``: the Config's fields build the config, the rest go to ``run``."""
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        config = cls.Config(**checked_params(cls, {k: v for k, v in params.items() if k in fields}))
        rest = {k: v for k, v in params.items() if k not in fields}
        chunk = rest.get("chunk_size")
        if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
            raise ValueError(f"chunk_size must be a whole number of at least 1, got {chunk!r}")
        return cls(config).run(store, **rest)

    @classmethod
    def accepts(cls) -> list[str]:
        """Every parameter ``run_with`` takes (the CLI checks --param against it)."""
        import inspect

        run_params = [p for p in inspect.signature(cls.run).parameters if p not in ("self", "store")]
        return [f.name for f in dataclasses.fields(cls.Config)] + run_params

    @classmethod
    def help(cls) -> dict[str, str]:
        """Config field -> help text (with the default)."""
        out = {}
        for f in dataclasses.fields(cls.Config):
            default = f.default if f.default is not dataclasses.MISSING else None
            out[f.name] = f"{f.metadata.get('help', '')} (default {default!r})".strip()
        return out

    # ---------------------------------------------------------- the views
    @classmethod
    def columns(cls) -> list[pa.Field]:
        """The result columns the views show."""
        names = cls.view_columns or [n for n in cls.result_schema.names if n not in ("id", "kind")]
        return [cls.result_schema.field(n) for n in names]

    @classmethod
    def derived_columns(cls, store: Store) -> dict[str, list[tuple[str, str, str]]]:
        """view -> [(column, SQL expression over the joined aliases, DuckDB type)] added after the scorer's
        own columns (aliases are the scorers' names)."""
        return {}

    @classmethod
    def extra_views(cls) -> dict[str, str]:
        """Views of their own over the scored views (name -> SQL)."""
        return {}


def checked_params(cls: type[Scorer], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` for ``cls.Config``, each of its field's type: a number where a number is expected (finite:
    a ratio of NaN or infinity was spliced into the scored views' SQL and made every later command on the
    store fail), a whole number, a bool, text (a number given for text is taken as its text). ValueError
    naming the parameter otherwise. A parameter whose type is none of these is passed on as given."""
    hints = typing.get_type_hints(cls.Config)
    out = {}
    for key, value in params.items():
        kinds = typing.get_args(hints[key]) if isinstance(hints[key], types.UnionType) else (hints[key],)
        if value is None and type(None) in kinds:
            out[key] = value
            continue
        base = next((k for k in kinds if k is not type(None)), object)
        ok = True
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if base is float:  # kept as given (an int stays an int): the result key hashes the value as given
            ok = number and _finite(value)
        elif base is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif base is bool:
            ok = isinstance(value, bool)
        elif base is str and number:
            value = str(value)
        elif base is str:
            ok = isinstance(value, str)
        if not ok:
            want = {float: "a finite number", int: "a whole number", bool: "true or false", str: "text"}[base]
            raise ValueError(f"parameter {key} must be {want}, got {value!r}")
        out[key] = value
    return out


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond any float
        return False


def register(cls: type[Scorer]) -> type[Scorer]:
    """Add a scorer class to the registry (defining a subclass with a name does it)."""
    from curation.core.names import safe_name

    safe_name(cls.name, "scorer name")
    REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a scorer from the registry (tests that define one)."""
    REGISTRY.pop(name, None)


def scorers() -> list[type[Scorer]]:
    """Every registered scorer, in ``order``."""
    return sorted(REGISTRY.values(), key=lambda c: c.order)


def duckdb_type(t: pa.DataType) -> str:
    return _DUCKDB_TYPES[t]


def contract_columns(store: Store | None = None) -> dict[str, dict[str, str]]:
    """view -> {column: DuckDB type} of the columns the registered scorers put in the scored views."""
    out: dict[str, dict[str, str]] = {}
    for cls in scorers():
        if cls.result_schema is None:
            continue
        keep = set(cls.contract_columns or [f.name for f in cls.columns()])
        for view in cls.views:
            cols = out.setdefault(view, {})
            cols.update({f.name: duckdb_type(f.type) for f in cls.columns() if f.name in keep})
            derived = cls.derived_columns(store) if store is not None else cls.derived_columns(None)
            cols.update({name: typ for name, _, typ in derived.get(view, [])})
    return out
