"""`curate build`: apply a policy to the scored views and write weighted training shards plus a manifest.

Steps, for each consumer of the policy (sft, rm, ranking):

1. bind every SQL expression of the policy against the consumer's relation (nothing
   is written if one fails; see ``curation.builds.policy.check_expressions``);
2. decide one outcome per record, in this order: near duplicate (record or prompt level,
   ``Dedup.near_level``), semantic duplicate, the first failing filter, a remedy that drops (rm),
   the per-source mix (capped), else kept in the split chosen by a salted hash of the prompt text
   of the record's near-duplicate prompt cluster; rm weights balanced by length if asked;
3. write the kept rows, sorted by id within each split, as fixed-size Parquet shards
   with fixed writer settings (no timestamps), so the same policy on the same store
   gives byte-identical shards;
4. write ``accounting.parquet`` (one row per input record of the policy's kinds,
   including quarantined rows and exact duplicates from ingest) and ``manifest.json`` (with the
   rm consumer's chosen-longer diagnostics, curation.builds.length_diagnostics).

The near-duplicate tables are recomputed first when stale (curation.ingest.dedup.refresh_near_duplicates),
so units committed by an ingest that died before marking are never built unmarked.

The whole build is written under ``.staging`` and renamed into ``curated/<name>/``
when complete (an older build of the same name is renamed away first, then deleted),
under the store's writer lock, so a killed build never leaves shards that look complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curation.builds.length_diagnostics import balance_weights, build_diagnostics, chars_sql, raw_diagnostics
from curation.builds.policy import (
    CONSUMER_VIEWS,
    Policy,
    PolicyError,
    RmConsumer,
    SftConsumer,
    check_expressions,
    expressions,
    load_policy,
    resolve_policy,
)
from curation.core.errors import StoreError
from curation.core.hashing import file_sha256
from curation.core.names import safe_name, sql_files
from curation.core.store import KIND_VIEW, Store
from curation.ingest.dedup import near_dup_views, refresh_near_duplicates
from curation.scoring import versions
from curation.scoring.views import score_views
from schemas.ids import text_id
from schemas.shards import SHARD_SCHEMA_VERSION, SHARD_SCHEMAS


def contract_columns() -> dict[str, dict[str, str]]:
    """Columns of the scored views fixed by the scoring contract (the scorer registry generates them:
    curation.scoring.contract.contract_columns); missing ones read as NULL."""
    from curation.scoring import registry
    from curation.scoring.contract import contract_columns as generated

    registry()
    return generated()


def __getattr__(name: str):  # CONTRACT_COLUMNS: view -> {column: DuckDB type}, from the registry
    if name == "CONTRACT_COLUMNS":
        return contract_columns()
    raise AttributeError(name)


#: Parquet writer settings of every shard: fixed, so rebuilding gives the same bytes.
SHARD_WRITE_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "data_page_version": "1.0",
}

ACCOUNTING_SCHEMA = pa.schema(
    [
        pa.field("consumer", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("id", pa.string()),  # null for rows quarantined before they had content
        pa.field("source", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        # kept | filtered | near_duplicate | semantic_duplicate | capped | quarantined | duplicate
        pa.field("status", pa.string()),
        # status plus detail: kept:train, filtered:<clause>, near_duplicate_of:<id>, capped:<source>, ...
        pa.field("outcome", pa.string()),
        pa.field("split", pa.string()),
        pa.field("weight", pa.float64()),
        pa.field("margin", pa.float64()),
        pa.field("soft_label", pa.float64()),
        pa.field("flipped", pa.bool_()),
        pa.field("group", pa.int32()),
        pa.field("label_smoothing", pa.float64()),
    ]
)
STATUSES = ("kept", "filtered", "near_duplicate", "semantic_duplicate", "capped", "quarantined", "duplicate")


@dataclass
class BuildResult:
    name: str
    path: Path
    manifest: dict


# ----------------------------------------------------------------- relations
def relation_name(consumer: str) -> str:
    return f"curate_{consumer}"


def open_connection(store: Store) -> duckdb.DuckDBPyConnection:
    """A sandboxed read-only connection with one relation per consumer: the scored view (or the base
    view when no scorer has run) with every contract column (NULL where missing) plus the MinHash
    near-duplicate columns: ``near_cluster`` and ``near_representative`` (prompt level),
    ``near_record_cluster`` and ``near_record_representative`` (record level; curation.ingest.dedup)."""
    con = store.connect(near_dup_views(store) | score_views(store))
    views = {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    contract = contract_columns()
    for consumer, (kind, scored) in CONSUMER_VIEWS.items():
        src = scored if scored in views else KIND_VIEW[kind]
        have = {r[0] for r in con.sql(f'DESCRIBE SELECT * FROM "{src}"').fetchall()}
        extra = "".join(
            f', CAST(NULL AS {t}) AS "{c}"' for c, t in contract.get(scored, {}).items() if c not in have
        )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {relation_name(consumer)} AS "
            f"SELECT s.*{extra}, n.cluster AS near_cluster, coalesce(n.representative, true) AS near_representative, "
            "n.record_cluster AS near_record_cluster, "
            "coalesce(n.record_representative, true) AS near_record_representative "
            f"FROM \"{src}\" s LEFT JOIN near_duplicates n ON n.id = s.id AND n.kind = '{kind}'"
        )
    return con


def _prompt_sql(consumer: str, alias: str = "") -> str:
    """SQL rendering of the prompt exactly as ``schemas.ids.prompt_text`` does (role: content, newline)."""
    a = f"{alias}." if alias else ""
    msgs = f"list_slice({a}messages, 1, len({a}messages) - 1)" if consumer == "sft" else f"{a}prompt"
    return f"array_to_string(list_transform({msgs}, lambda m: m.role || ': ' || m.content), chr(10))"


def _cluster_prompts(con: duckdb.DuckDBPyConnection, consumer: str) -> pl.DataFrame:
    """(id, __cluster_prompt): for each record of a near-duplicate prompt cluster, the prompt of the
    cluster's representative, so that the split puts the whole cluster on one side."""
    kind = CONSUMER_VIEWS[consumer][0]
    return frame(
        con,
        f"SELECT n.id, {_prompt_sql(consumer, 'r')} AS __cluster_prompt FROM near_duplicates n "
        f"JOIN {KIND_VIEW[kind]} r ON r.id = n.cluster WHERE n.kind = '{kind}'",
    )


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pl.DataFrame:
    """The result of ``sql`` (checked by the caller; ``params`` bound, never spliced) as a polars frame."""
    df = pl.from_arrow(con.sql(sql, params=params).to_arrow_table())
    assert isinstance(df, pl.DataFrame)
    return df


def split_of(prompt: str, salt: str, eval_fraction: float) -> str:
    """'eval' for a salted-hash share of prompts (deterministic, machine independent), else 'train'."""
    h = int(text_id(salt, prompt)[:16], 16) / 2**64
    return "eval" if h < eval_fraction else "train"


# ----------------------------------------------------------------- decisions
def decide(con: duckdb.DuckDBPyConnection, policy: Policy, consumer: str) -> pl.DataFrame:
    """One row per record of the consumer's kind: status, outcome, split and the training columns."""
    c = policy.active()[consumer]
    rel = relation_name(consumer)
    cols = [
        "id",
        "source",
        "source_file",
        "source_row",
        "near_cluster",
        "near_representative",
        "near_record_cluster",
        "near_record_representative",
        "sem_cluster",
        "sem_representative",
        f"{_prompt_sql(consumer)} AS __prompt",
        f"({c.weight})::DOUBLE AS __weight",
    ]
    cols += [f"coalesce(({f.where})::BOOLEAN, false) AS __f{i}" for i, f in enumerate(c.filters)]
    if isinstance(c, RmConsumer):
        cols += ["quality_class", "adaptive_margin", "group_id"]
        cols += [f"{chars_sql('chosen')} AS __chars_chosen", f"{chars_sql('rejected')} AS __chars_rejected"]
    if isinstance(c, SftConsumer):
        cols.append(f"({c.label_smoothing})::DOUBLE AS __ls")
    try:
        df = frame(con, f"SELECT {', '.join(cols)} FROM {rel} ORDER BY id")
    except duckdb.Error as exc:  # a clause that binds but fails on some row (overflow, a bad cast, error())
        raise _failing_clause(con, policy, consumer, rel, exc) from None

    rules: list[tuple[pl.Expr, str, pl.Expr]] = []
    level = policy.dedup.near_level(consumer)
    if level is not None:
        near = "near_record_" if level == "record" else "near_"
        rules.append(
            (
                pl.col(f"{near}representative").not_().fill_null(False),
                "near_duplicate",
                pl.lit("near_duplicate_of:") + pl.col(f"{near}cluster"),
            )
        )
    if policy.dedup.semantic_duplicates == "drop":
        rules.append(
            (
                pl.col("sem_representative").not_().fill_null(False),
                "semantic_duplicate",
                pl.lit("semantic_duplicate_of:") + pl.col("sem_cluster"),
            )
        )
    for i, f in enumerate(c.filters):
        rules.append((pl.col(f"__f{i}").not_(), "filtered", pl.lit(f"filtered:{f.name}")))
    if isinstance(c, RmConsumer):
        for cls in ("incorrect", "ambiguous"):
            if getattr(c.remedies, cls) == "drop":
                rules.append((pl.col("quality_class") == cls, "filtered", pl.lit(f"filtered:remedy.{cls}")))
    status: pl.Expr = pl.lit(None, dtype=pl.String)
    outcome: pl.Expr = pl.lit(None, dtype=pl.String)
    for cond, st, out in reversed(rules):
        status = pl.when(cond.fill_null(False)).then(pl.lit(st)).otherwise(status)
        outcome = pl.when(cond.fill_null(False)).then(out).otherwise(outcome)
    df = df.with_columns(status=status, outcome=outcome)

    _check_values(df, policy, consumer)
    df = _apply_mix(df, c.mix, consumer, policy.name)

    salt, frac = policy.split.salt, policy.split.eval_fraction
    df = df.join(_cluster_prompts(con, consumer), on="id", how="left", maintain_order="left")
    split_key = df.select(pl.coalesce("__cluster_prompt", "__prompt")).to_series()
    split = [split_of(p, salt, frac) for p in split_key.to_list()]
    df = df.with_columns(__split=pl.Series(split, dtype=pl.String))
    kept = pl.col("status").is_null()
    df = df.with_columns(
        status=pl.when(kept).then(pl.lit("kept")).otherwise(pl.col("status")),
        outcome=pl.when(kept).then(pl.lit("kept:") + pl.col("__split")).otherwise(pl.col("outcome")),
        split=pl.when(kept).then(pl.col("__split")),
    )
    df = _training_columns(df, c)
    if isinstance(c, RmConsumer) and c.balance_length:
        df = balance_weights(df)
    return df


def _check_values(df: pl.DataFrame, policy: Policy, consumer: str) -> None:
    """Weights (and epsilons) of the surviving rows must be finite and in range; name the clause and ids."""
    c = policy.active()[consumer]
    alive = df.filter(pl.col("status").is_null())
    checks = [("weight", c.weight, "__weight", 0.0, None)]
    if isinstance(c, SftConsumer):
        checks.append(("label_smoothing", c.label_smoothing, "__ls", 0.0, 1.0))
    for key, expr, col, lo, hi in checks:
        v = pl.col(col)
        bad_expr = v.is_null() | v.is_nan() | v.is_infinite() | (v < lo)
        if hi is not None:
            bad_expr = bad_expr | (v >= hi)
        bad = alive.filter(bad_expr)
        if bad.height:
            rng = f">= {lo}" + (f" and < {hi}" if hi is not None else "")
            ex = bad.select("id", col).head(3).rows()
            raise PolicyError(
                f"policy {policy.name!r}: consumers.{consumer}.{key} `{expr}` gives a NULL, non-finite or "
                f"out-of-range value (must be {rng}) for {bad.height} kept record(s), e.g. "
                + ", ".join(f"{i} -> {x}" for i, x in ex)
                + ". Wrap it in coalesce(...) or filter those records out."
            )


def _failing_clause(
    con: duckdb.DuckDBPyConnection, policy: Policy, consumer: str, rel: str, exc: duckdb.Error
) -> PolicyError:
    """The PolicyError for a query of the policy's clauses that failed while running: each clause of
    ``consumer`` is run alone to name the one that fails."""
    for cname, label, expr, _ in expressions(policy):
        if cname != consumer:
            continue
        try:
            con.sql(f"SELECT bit_xor(hash(({expr}))) FROM {rel}").fetchall()  # every row evaluated
        except duckdb.Error as one:
            return PolicyError(f"policy {policy.name!r}: {label} `{expr}` fails on the data: {_line(one)}")
    return PolicyError(f"policy {policy.name!r}: consumers.{consumer} cannot be applied: {_line(exc)}")


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\nLINE ")[0].split())  # DuckDB's message, without the query it quotes


def _apply_mix(df: pl.DataFrame, mix, consumer: str, policy_name: str) -> pl.DataFrame:
    """Per-source ratios and caps over the surviving rows; the rows beyond a source's quota become capped."""
    if not mix.ratios and not mix.caps:
        return df
    alive = df.filter(pl.col("status").is_null())
    available = dict(alive.group_by("source").len().iter_rows())
    all_sources = set(df["source"].unique().to_list())
    for key, table in (("ratios", mix.ratios), ("caps", mix.caps)):
        unknown = sorted(set(table) - all_sources)
        if unknown:
            raise PolicyError(
                f"policy {policy_name!r}: consumers.{consumer}.mix.{key} names source(s) {unknown} "
                f"with no records here (sources: {sorted(all_sources)})"
            )
    quota = dict(available)
    if mix.ratios:
        missing = sorted(set(available) - set(mix.ratios))
        if missing:
            raise PolicyError(
                f"policy {policy_name!r}: consumers.{consumer}.mix.ratios has no ratio for source(s) "
                f"{missing}; list every source (0 removes one)"
            )
        total_r = sum(mix.ratios.values())
        shares = {s: r / total_r for s, r in mix.ratios.items()}
        target = min(available[s] / shares[s] for s in available if shares[s] > 0)
        quota = {s: min(available[s], int(round(shares[s] * target))) for s in available}
    for s, cap in mix.caps.items():
        if s in quota:
            quota[s] = min(quota[s], cap)
    order = [text_id(mix.salt, i) for i in df["id"].to_list()]
    df = df.with_columns(__mix=pl.Series(order, dtype=pl.String))
    rank = pl.col("__mix").rank("ordinal").over("source", pl.col("status").is_null())
    q = pl.col("source").replace_strict(quota, default=None, return_dtype=pl.Int64)
    capped = pl.col("status").is_null() & (rank > q)
    return df.with_columns(
        status=pl.when(capped).then(pl.lit("capped")).otherwise(pl.col("status")),
        outcome=pl.when(capped).then(pl.lit("capped:") + pl.col("source")).otherwise(pl.col("outcome")),
    ).drop("__mix")


def _training_columns(df: pl.DataFrame, c) -> pl.DataFrame:
    kept = pl.col("status") == "kept"
    out = [pl.when(kept).then(pl.col("__weight")).alias("weight")]
    if isinstance(c, RmConsumer):
        r = c.remedies
        qc = pl.col("quality_class")
        soft = pl.lit(False)
        for cls in ("incorrect", "ambiguous"):
            if getattr(r, cls) == "soft_label":
                soft = soft | (qc == cls).fill_null(False)
        flip = (qc == "incorrect").fill_null(False) & pl.lit(r.incorrect == "flip")
        margin = (
            pl.col("adaptive_margin").fill_null(0.0).fill_nan(0.0).clip(lower_bound=0.0)
            if r.adaptive_margin
            else pl.lit(0.0)
        )
        out += [
            pl.when(kept).then(margin).alias("margin"),
            pl.when(kept)
            .then(pl.when(soft).then(pl.lit(r.soft_label_alpha)).otherwise(0.0))
            .alias("soft_label"),
            pl.when(kept).then(flip).alias("flipped"),
            pl.when(kept).then(pl.col("group_id").fill_null(0).cast(pl.Int32)).alias("group"),
        ]
    else:
        out += [
            pl.lit(None, dtype=pl.Float64).alias("margin"),
            pl.lit(None, dtype=pl.Float64).alias("soft_label"),
            pl.lit(None, dtype=pl.Boolean).alias("flipped"),
            pl.lit(None, dtype=pl.Int32).alias("group"),
        ]
    ls = pl.when(kept).then(pl.col("__ls")) if isinstance(c, SftConsumer) else pl.lit(None, dtype=pl.Float64)
    out.append(ls.alias("label_smoothing"))
    return df.with_columns(out)


# ------------------------------------------------------------------- shards
def _shard_query(consumer: str, split: str) -> str:
    assert split in ("train", "eval")
    rel = relation_name(consumer)
    if consumer == "sft":
        body = "c.id, c.source, c.messages, d.weight, d.label_smoothing"
    elif consumer == "rm":
        body = (
            "c.id, c.source, c.prompt, "
            "CASE WHEN d.flipped THEN c.rejected ELSE c.chosen END AS chosen, "
            "CASE WHEN d.flipped THEN c.chosen ELSE c.rejected END AS rejected, "
            'd.weight, d.margin, d.soft_label, d.flipped, d."group"'
        )
    else:
        body = (
            "c.id, c.source, c.prompt, list_transform(c.candidates, lambda x: x.content) AS candidates, "
            "list_transform(c.candidates, lambda x: x.grade) AS grades, "
            "list_transform(c.candidates, lambda x: x.is_reference) AS is_reference, d.weight"
        )
    return f"SELECT {body} FROM {rel} c JOIN __decisions d ON d.id = c.id WHERE d.split = '{split}' ORDER BY c.id"


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [table.column(f.name).cast(f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def write_shard(table: pa.Table, path: Path) -> str:
    """Write one shard with the fixed settings; return the sha256 of its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=max(1, table.num_rows), **SHARD_WRITE_OPTIONS)
    return file_sha256(path)


# --------------------------------------------------------------- accounting
def _ingest_rows(con: duckdb.DuckDBPyConnection, consumer: str, kind: str) -> pl.DataFrame:
    """Quarantined rows and exact duplicates of this kind, from the ingest tables."""
    q = con.sql(
        f"""
        SELECT '{consumer}' AS consumer, '{kind}' AS kind, NULL::VARCHAR AS id, q.source, q.source_file,
               q.source_row, 'quarantined' AS status,
               'quarantined:' || coalesce(q.field || ': ', '') || coalesce(q.reason, '') AS outcome
        FROM quarantine q
        WHERE EXISTS (SELECT 1 FROM ingest_runs r WHERE r.ingest_run = q.ingest_run
                      AND r.source_file = q.source_file AND r.kind = '{kind}')
        UNION ALL
        SELECT '{consumer}', kind, id, source, source_file, source_row, 'duplicate', 'duplicate_of:' || id
        FROM duplicates WHERE kind = '{kind}'
        """
    ).to_arrow_table()
    return pl.from_arrow(q)  # type: ignore[return-value]


def _accounting(decisions: dict[str, pl.DataFrame], extra: list[pl.DataFrame]) -> pa.Table:
    names = ACCOUNTING_SCHEMA.names
    frames = []
    for consumer, df in decisions.items():
        kind = CONSUMER_VIEWS[consumer][0]
        frames.append(df.with_columns(consumer=pl.lit(consumer), kind=pl.lit(kind)).select(names))
    for e in extra:
        frames.append(
            e.with_columns([pl.lit(None).alias(n) for n in names if n not in e.columns]).select(names)
        )
    tbl = pl.concat([f.cast({n: _PL[n] for n in names}) for f in frames], how="vertical")
    tbl = tbl.sort(["consumer", "status", "id", "source_file", "source_row"], nulls_last=True)
    return _conform(tbl.to_arrow(), ACCOUNTING_SCHEMA)


_PL = {
    "consumer": pl.String,
    "kind": pl.String,
    "id": pl.String,
    "source": pl.String,
    "source_file": pl.String,
    "source_row": pl.Int64,
    "status": pl.String,
    "outcome": pl.String,
    "split": pl.String,
    "weight": pl.Float64,
    "margin": pl.Float64,
    "soft_label": pl.Float64,
    "flipped": pl.Boolean,
    "group": pl.Int32,
    "label_smoothing": pl.Float64,
}


# -------------------------------------------------------------- provenance
def input_units(store: Store, kinds: set[str]) -> list[dict]:
    """The committed ingest units of the given kinds (their folder names are content keys)."""
    out = []
    for run in store.files("ingest/*/run.parquet"):
        for row in pq.read_table(run).to_pylist():
            if row["kind"] in kinds:
                out.append(
                    {
                        "unit": run.parent.name,
                        "source_file": row["source_file"],
                        "file_sha256": row["file_sha256"],
                    }
                )
    return sorted(out, key=lambda r: (r["unit"], r["source_file"]))


def _digest(obj) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


# --------------------------------------------------------------------- build
def build(
    store: Store,
    policy: Policy | str | Path,
    name: str | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build ``curated/<name>/`` from the policy (a Policy, a file, or a bundled name such as ``default``);
    ``name`` defaults to the policy's name. Replaces an older build of that name atomically."""
    if not isinstance(policy, Policy):
        policy = load_policy(resolve_policy(str(policy)))
    say = progress or (lambda _msg: None)
    name = safe_name(policy.name if name is None else name, "build name")
    store.path("curated", name)  # and not a symlink out of the store
    with store.writer_lock("build"):
        refreshed = refresh_near_duplicates(store)  # units an ingest committed but died before marking
        if refreshed:
            say(
                f"near-duplicate marks were stale (new units or older marks), recomputed: {', '.join(refreshed)}"
            )
        with contextlib.closing(open_connection(store)) as con:
            consumers = policy.active()
            check_expressions(con, policy, {c: relation_name(c) for c in consumers})
            decisions = {
                c: decide(con, policy, c) for c in consumers
            }  # may raise PolicyError: nothing written yet
            extra = [_ingest_rows(con, c, CONSUMER_VIEWS[c][0]) for c in consumers]
            accounting = _accounting(decisions, extra)
            kinds = {CONSUMER_VIEWS[c][0] for c in consumers}
            scorers = versions(store)
            inputs = input_units(store, kinds)

            staged = store.new_staging_dir()
            try:
                shards, counts = _write_shards(con, policy, decisions, staged, say)
                pq.write_table(accounting, staged / "accounting.parquet", **SHARD_WRITE_OPTIONS)
                acc_sha = file_sha256(staged / "accounting.parquet")
                manifest = _manifest(name, policy, scorers, inputs, shards, counts, accounting, acc_sha)
                if "rm" in decisions:
                    manifest["length_diagnostics"] = build_diagnostics(decisions["rm"])
                (staged / "manifest.json").write_bytes(
                    orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
                )
                path = _commit(store, staged, name)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
    say(f"build {name}: {sum(s['rows'] for s in shards)} rows in {len(shards)} shard(s) -> {path}")
    return BuildResult(name=name, path=path, manifest=manifest)


def _write_shards(con, policy: Policy, decisions: dict[str, pl.DataFrame], staged: Path, say):
    shards, counts = [], {}
    splits = ["train"] + (["eval"] if policy.split.eval_fraction > 0 else [])
    for consumer, df in decisions.items():
        schema = SHARD_SCHEMAS[consumer]
        dec = df.filter(pl.col("status") == "kept").select(
            "id", "split", "weight", "margin", "soft_label", "flipped", "group", "label_smoothing"
        )
        con.register("__decisions", dec.to_arrow())
        counts[consumer] = {}
        for split in splits:
            table = _conform(con.sql(_shard_query(consumer, split)).to_arrow_table(), schema)
            counts[consumer][split] = dict(
                sorted(pl.from_arrow(table.select(["source"])).group_by("source").len().iter_rows())  # type: ignore[union-attr]
            )
            n_shards = max(1, -(-table.num_rows // policy.shard_rows))
            for k in range(n_shards):
                part = table.slice(k * policy.shard_rows, policy.shard_rows)
                rel = f"{consumer}/{split}-{k:05d}.parquet"
                sha = write_shard(part, staged / rel)
                shards.append(
                    {"consumer": consumer, "split": split, "path": rel, "rows": part.num_rows, "sha256": sha}
                )
            say(f"{consumer}/{split}: {table.num_rows} rows in {n_shards} shard(s)")
        con.unregister("__decisions")
    return shards, counts


def _manifest(
    name, policy: Policy, scorers, inputs, shards, counts, accounting: pa.Table, acc_sha: str
) -> dict:
    acc = pl.from_arrow(accounting.select(["consumer", "status", "outcome"]))
    assert isinstance(acc, pl.DataFrame)
    totals: dict = {}
    for consumer in policy.active():
        sub = acc.filter(pl.col("consumer") == consumer)
        by_status = dict(sub.group_by("status").len().iter_rows())
        reasons = (
            sub.filter(pl.col("status").is_in(["filtered", "capped"]))
            .group_by("outcome")
            .len()
            .sort("outcome")
            .iter_rows()
        )
        totals[consumer] = {
            "records": sub.height,
            "by_status": {s: int(by_status.get(s, 0)) for s in STATUSES},
            "dropped_by": dict(reasons),
        }
    policy_sha = policy.sha256()
    scorer_brief = {
        k: {kk: v.get(kk) for kk in ("version", "fingerprint", "params", "key")} for k, v in scorers.items()
    }
    return {
        "schema_version": SHARD_SCHEMA_VERSION,
        "name": name,
        "policy_sha256": policy_sha,
        "policy": json.loads(policy.canonical_json()),
        "lineage_sha256": _digest({"policy": policy_sha, "inputs": inputs, "scorers": scorer_brief}),
        "scorers": scorer_brief,
        "inputs": inputs,
        "shards": shards,
        "counts": counts,
        "accounting": {"file": "accounting.parquet", "sha256": acc_sha, "totals": totals},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _commit(store: Store, staged: Path, name: str) -> Path:
    """Move the staged build to ``curated/<name>``; an older build of that name is swapped out in one
    step (``Store.replace_dir``): a kill at any instant leaves the old build or the new one visible."""
    return store.replace_dir(staged, "curated", name)


def read_manifest(store: Store, name: str) -> dict:
    path = store.path("curated", safe_name(name, "build name"), "manifest.json")
    if not path.is_file():
        raise StoreError(f"no build {name!r} in {store.root} (run `curate build` first)")
    return orjson.loads(path.read_bytes())


def build_names(store: Store) -> list[str]:
    """The builds in the store: folders ``curated/<plain name>`` holding a manifest.json file."""
    names = []
    for p in store.files("curated/*/manifest.json"):
        try:
            names.append(safe_name(p.parent.name))
        except StoreError:
            continue  # not ours (a folder someone made by hand); never read as a build
    return sorted(names)


def curated_views(store: Store) -> dict[str, str]:
    """View ``curated_accounting``: every build's accounting rows with a ``build`` column (for `curate sql`)."""
    files = [store.root / "curated" / n / "accounting.parquet" for n in build_names(store)]
    files = [f for f in files if f.is_file()]
    if not files:
        schema = pa.schema([pa.field("build", pa.string()), *ACCOUNTING_SCHEMA])
        from curation.core.store import empty_select

        return {"curated_accounting": empty_select(schema)}
    return {
        "curated_accounting": "SELECT regexp_extract(filename, '/curated/([^/]+)/accounting\\.parquet$', 1) AS build, "
        f"* EXCLUDE (filename) FROM read_parquet({sql_files(files)}, filename = true)"
    }


# ------------------------------------------------- chosen-longer diagnostics
def store_frame(store: Store, source: str | None = None) -> pl.DataFrame:
    """One row per pair of the store (or of one ``source``): id, source, quality_class (NULL before
    reward_margin) and the two character lengths, through the build's read-only relation (so every contract
    column exists)."""
    sql = (
        f"SELECT id, source, quality_class, {chars_sql('chosen')} AS __chars_chosen, "
        f"{chars_sql('rejected')} AS __chars_rejected FROM {relation_name('rm')}"
    )
    with contextlib.closing(open_connection(store)) as con:
        if source is None:
            return frame(con, sql)
        return frame(con, sql + " WHERE source = $1", [source])


def store_diagnostics(store: Store) -> dict[str, dict[str, Any]]:
    """``raw_diagnostics`` of every pair in the store (no build needed)."""
    return raw_diagnostics(store_frame(store))
