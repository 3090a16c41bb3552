"""Near-duplicate records with MinHash LSH (rensa), marked at two levels, never deleted.

Exact duplicates are handled at ingest (same content id -> the ``duplicates`` table). Here two
levels of near-duplicates are marked, each a cluster with one representative, the record
ingested first:

* prompt level (``cluster``, ``representative``, ``similarity``): records whose *prompts* are
  near-identical (estimated Jaccard similarity of word 3-gram shingles >= threshold);
* record level (``record_cluster``, ``record_representative``, ``record_similarity``): records of
  one prompt cluster whose *responses* are near-identical too: a pair's chosen and its rejected
  each (same orientation), a ranking's candidates in grade order with the same grade pattern, an
  SFT record's answer. Several distinct pairs of one prompt (several judges or completions) are
  distinct records; a near-copy of a pair is a record-level duplicate.

The table ``dedup/near_<kind>.parquet`` holds every record of a prompt cluster of two or more,
exposed as the view ``near_duplicates``; curation policies decide which level to drop.

Derived state: each table records in its Parquet metadata what it was computed from (the committed
ingest units of its kind, the MinHash parameters, the algorithm version). ``stale_kinds`` compares
that with the store, and ``refresh_near_duplicates`` recomputes exactly the stale kinds, so a run
killed between committing a unit and marking never leaves marks missing for good: the next ingest
(even one that skips every file) or build recomputes them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import rensa

from curation.core.store import parquet_select

if TYPE_CHECKING:
    from curation.core.store import Store

KINDS = ("sft", "pair", "ranking")
#: Bumped when what the table holds changes: older tables are then stale and recomputed.
NEAR_VERSION = "2"
STATE_KEY = b"curate.near_state"

NEAR_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("cluster", pa.string()),  # prompt level: id of the prompt cluster's representative
        pa.field("representative", pa.bool_()),
        pa.field("similarity", pa.float64()),  # estimated prompt Jaccard to the representative
        pa.field("record_cluster", pa.string()),  # record level: id of the record cluster's representative
        pa.field("record_representative", pa.bool_()),
        pa.field("record_similarity", pa.float64()),  # lowest response Jaccard to the record representative
    ]
)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class MinHashParams:
    threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 3
    seed: int = 7

    @property
    def bands(self) -> int:
        return lsh_bands(self.threshold, self.num_perm)


def lsh_bands(threshold: float, num_perm: int) -> int:
    """Number of bands b (rows r = num_perm // b) whose S-curve midpoint (1/b)^(1/r) is nearest the threshold,
    preferring recall (midpoint at or below the threshold). 0.8 with 128 permutations gives 16 x 8."""
    best, best_gap = 1, float("inf")
    for b in range(1, num_perm + 1):
        if num_perm % b:
            continue
        r = num_perm // b
        mid = (1.0 / b) ** (1.0 / r)
        gap = abs(mid - threshold) + (0.05 if mid > threshold else 0.0)
        if gap < best_gap:
            best, best_gap = b, gap
    return best


def shingles(text: str, n: int = 3) -> list[str]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return [" ".join(words)] if words else [text]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _minhash(items: list[str], params: MinHashParams) -> rensa.RMinHash:
    m = rensa.RMinHash(num_perm=params.num_perm, seed=params.seed)
    m.update(items)
    return m


def minhashes(texts: Sequence[str], params: MinHashParams) -> list[rensa.RMinHash]:
    return [_minhash(shingles(t, params.shingle), params) for t in texts]


def near_duplicate_clusters(
    texts: Sequence[str], params: MinHashParams = MinHashParams()
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster index (the representative's position) and similarity to it, for each text.

    Items earlier in ``texts`` win as representatives. Candidate pairs from the
    LSH bands are verified with the MinHash Jaccard estimate before merging.
    """
    return cluster_minhashes(minhashes(texts, params), params)


def cluster_minhashes(
    hashes: Sequence[rensa.RMinHash],
    params: MinHashParams,
    similar: Callable[[int, int], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``near_duplicate_clusters`` from precomputed MinHashes (lets callers stream the texts).

    LSH candidates (i, j) are merged when ``similar(i, j)`` holds (default: the MinHash Jaccard of
    ``hashes`` reaches the threshold). The returned similarity is the Jaccard of ``hashes``."""
    n = len(hashes)
    lsh = rensa.RMinHashLSH(threshold=params.threshold, num_perm=params.num_perm, num_bands=params.bands)
    lsh.insert_pairs(list(enumerate(hashes)))
    parent = np.arange(n)
    accept = similar or (lambda i, j: hashes[i].jaccard(hashes[j]) >= params.threshold)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for i, cands in enumerate(lsh.query_all(hashes)):
        for j in cands:
            if j <= i:
                continue
            a, b = find(i), find(j)
            if a != b and accept(i, j):  # already joined: no need to compare (large clusters stay linear)
                parent[max(a, b)] = min(a, b)  # the earlier item stays the root
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    sim = np.array([1.0 if roots[i] == i else hashes[i].jaccard(hashes[roots[i]]) for i in range(n)])
    return roots, sim


# ------------------------------------------------------------------- texts
_JOIN = "list_aggregate(list_transform({}, lambda m: m.content), 'string_agg', '\n')"


def prompt_texts_sql(kind: str) -> str:
    """SQL giving (id, prompt text) in ingest order for a kind's view."""
    view = {"sft": "sft", "pair": "pairs", "ranking": "rankings"}[kind]
    if kind == "sft":
        expr = _JOIN.format("list_filter(messages, lambda m: m.role <> 'assistant')")
    else:
        expr = _JOIN.format("prompt")
    return (
        f"SELECT v.id, {expr} AS text FROM {view} v JOIN ingest_runs r "
        "ON v.source_file = r.source_file AND v.ingest_run = r.ingest_run "
        "ORDER BY r.started_at, v.source_file, v.source_row, v.id"
    )


def response_sides_sql(kind: str) -> str:
    """SQL giving (pos, root, the record's responses) for the records in ``__near_members(id, pos, root)``,
    one prompt cluster (root) after another, in ingest order (pos) within each."""
    if kind == "sft":
        cols = _JOIN.format("list_filter(messages, lambda m: m.role = 'assistant')") + " AS response"
        view = "sft"
    elif kind == "pair":
        cols = f"{_JOIN.format('chosen')} AS chosen, {_JOIN.format('rejected')} AS rejected"
        view = "pairs"
    else:
        cols = "list_transform(candidates, lambda c: {'content': c.content, 'grade': c.grade}) AS candidates"
        view = "rankings"
    return f"SELECT m.pos, m.root, {cols} FROM {view} v JOIN __near_members m ON m.id = v.id ORDER BY m.root, m.pos"


def response_sides(kind: str, row: dict[str, Any]) -> tuple[tuple, list[str]]:
    """(shape, texts) of one record's responses: two records are near-identical only with equal shapes
    and every text near-identical, side by side. A ranking's candidates go best grade first (ties by
    text), its shape is that grade pattern as dense ranks."""
    if kind == "pair":
        return ("pair",), [row["chosen"] or "", row["rejected"] or ""]
    if kind == "sft":
        return ("sft",), [row["response"] or ""]
    cands = sorted(row["candidates"] or [], key=lambda c: (-(c["grade"] or 0), c["content"] or ""))
    levels = sorted({c["grade"] or 0 for c in cands}, reverse=True)
    rank = {g: k for k, g in enumerate(levels)}
    return tuple(rank[c["grade"] or 0] for c in cands), [c["content"] or "" for c in cands]


# ------------------------------------------------------------------- state
def near_inputs(store: Store, kind: str) -> list[str]:
    """The committed ingest units holding records of ``kind`` (folder names are content keys)."""
    return sorted(p.parent.name for p in store.files(f"ingest/*/{kind}.parquet"))


def near_state(store: Store, kind: str, params: MinHashParams) -> dict[str, Any]:
    """What a near-duplicate table of ``kind`` computed now would be computed from."""
    return {"version": NEAR_VERSION, "params": asdict(params), "units": near_inputs(store, kind)}


def recorded_state(store: Store, kind: str) -> dict[str, Any] | None:
    """The state a table was computed from (its Parquet metadata): None without a table, {} for a table
    made before states were recorded."""
    path = store.root / "dedup" / f"near_{kind}.parquet"
    if not path.is_file():
        return None
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(STATE_KEY)
    return orjson.loads(raw) if raw else {}


def _params_of(state: dict[str, Any] | None) -> MinHashParams | None:
    try:
        return MinHashParams(**state["params"]) if state and state.get("params") else None
    except TypeError:  # parameters of another version of this module
        return None


def kind_params(store: Store, kind: str) -> MinHashParams:
    """The parameters ``kind``'s table was last computed with; else another kind's (the user's last
    choice, e.g. ``curate ingest --near-threshold``); else the defaults."""
    own = _params_of(recorded_state(store, kind))
    if own is not None:
        return own
    others = [p for k in KINDS if k != kind and (p := _params_of(recorded_state(store, k))) is not None]
    return others[0] if others else MinHashParams()


def stale_kinds(store: Store, params: MinHashParams | None = None) -> dict[str, MinHashParams]:
    """Kinds whose near-duplicate table is missing or was computed from other units or parameters, each
    with the parameters to recompute it with (``params``, else ``kind_params``). A kind with no records
    and no table is not stale."""
    out = {}
    for kind in KINDS:
        want = params or kind_params(store, kind)
        state = near_state(store, kind, want)
        recorded = recorded_state(store, kind)
        if recorded is None and not state["units"]:
            continue
        if recorded != state:
            out[kind] = want
    return out


def refresh_near_duplicates(store: Store, params: MinHashParams | None = None) -> dict[str, int]:
    """Recompute exactly the stale near-duplicate tables (see ``stale_kinds``); the caller holds the
    store's writer lock. Returns ``mark_near_duplicates``'s counts of each recomputed kind."""
    counts: dict[str, int] = {}
    for kind, want in stale_kinds(store, params).items():
        counts.update(mark_near_duplicates(store, [kind], want))
    return counts


# ----------------------------------------------------------------- marking
def mark_near_duplicates(
    store: Store, kinds: Sequence[str] = KINDS, params: MinHashParams = MinHashParams()
) -> dict[str, int]:
    """Recompute the near-duplicate table of each kind (the caller holds the writer lock); returns the
    number of prompt-level non-representatives per kind (``near_counts`` has both levels)."""
    counts: dict[str, int] = {}
    con = store.connect()
    try:
        for kind in kinds:
            state = near_state(store, kind, params)  # the units the view reads: fixed under the lock
            table = _near_table(con, kind, params)
            table = table.replace_schema_metadata({STATE_KEY: orjson.dumps(state)})
            store.write_parquet(table, f"dedup/near_{kind}.parquet")
            counts[kind] = table.num_rows - sum(table.column("representative").to_pylist())
    finally:
        con.close()
    return counts


def _near_table(con, kind: str, params: MinHashParams) -> pa.Table:
    ids: list[str] = []
    hashes: list[rensa.RMinHash] = []
    # stream the prompt texts: only ids and 128-value signatures stay in memory
    for batch in con.sql(prompt_texts_sql(kind)).to_arrow_reader(batch_size=50_000):
        ids.extend(batch.column("id").to_pylist())
        hashes.extend(minhashes([t or "" for t in batch.column("text").to_pylist()], params))
    if hashes:
        roots, sim = cluster_minhashes(hashes, params)
    else:
        roots, sim = np.array([], dtype=np.int64), np.array([])
    del hashes
    sizes = np.bincount(roots, minlength=len(ids)) if len(ids) else np.array([], dtype=np.int64)
    members = np.flatnonzero(sizes[roots] > 1) if len(ids) else np.array([], dtype=np.int64)
    rec_roots, rec_sim = _record_clusters(con, kind, ids, roots, members, params)
    return pa.table(
        {
            "id": [ids[i] for i in members],
            "kind": [kind] * len(members),
            "cluster": [ids[roots[i]] for i in members],
            "representative": [bool(roots[i] == i) for i in members],
            "similarity": [float(sim[i]) for i in members],
            "record_cluster": [ids[members[k]] for k in rec_roots],
            "record_representative": [bool(rec_roots[k] == k) for k in range(len(members))],
            "record_similarity": [float(s) for s in rec_sim],
        },
        schema=NEAR_SCHEMA,
    )


#: Prompt clusters up to this size compare every two members; larger ones take LSH candidates.
PAIRWISE_MAX = 64


def _record_clusters(
    con, kind: str, ids: list[str], roots: np.ndarray, members: np.ndarray, params: MinHashParams
) -> tuple[np.ndarray, np.ndarray]:
    """Record-level clusters among the members of prompt clusters, as positions into ``members`` (the
    record cluster's representative, and the lowest response Jaccard to it). The responses are read one
    prompt cluster at a time (sorted by cluster), so only one cluster's signatures are in memory."""
    m = len(members)
    rec_roots, rec_sim = np.arange(m), np.ones(m)
    if not m:
        return rec_roots, rec_sim
    con.register(
        "__near_members",
        pa.table({"id": [ids[i] for i in members], "pos": np.arange(m), "root": roots[members]}),
    )
    try:
        reader = con.sql(response_sides_sql(kind)).to_arrow_reader(batch_size=10_000)
        group: list[dict[str, Any]] = []
        for batch in reader:
            for row in batch.to_pylist():
                if group and row["root"] != group[0]["root"]:
                    _cluster_records(kind, group, params, rec_roots, rec_sim)
                    group = []
                group.append(row)
        if group:
            _cluster_records(kind, group, params, rec_roots, rec_sim)
    finally:
        con.unregister("__near_members")
    return rec_roots, rec_sim


def _cluster_records(
    kind: str, rows: list[dict[str, Any]], params: MinHashParams, rec_roots: np.ndarray, rec_sim: np.ndarray
) -> None:
    """Cluster the records of one prompt cluster (``rows`` in ingest order): two are near-identical with
    equal response shapes and every response side near-identical. Large clusters take LSH candidates from
    one signature of all sides (each side's shingles tagged with its place): when every side reaches the
    threshold so does the union (a mediant of fractions that each reach it)."""
    shapes, sides, combined = [], [], []
    for row in rows:
        shape, texts = response_sides(kind, row)
        grams = [shingles(t, params.shingle) for t in texts]
        shapes.append(shape)
        sides.append([_minhash(g, params) for g in grams])
        if len(rows) > PAIRWISE_MAX:
            combined.append(_minhash([f"{k}\x1f{g}" for k, gs in enumerate(grams) for g in gs], params))

    def similar(i: int, j: int) -> bool:
        return shapes[i] == shapes[j] and all(
            a.jaccard(b) >= params.threshold for a, b in zip(sides[i], sides[j], strict=True)
        )

    if combined:
        local, _ = cluster_minhashes(combined, params, similar)
    else:  # every two members, merged as cluster_minhashes merges its candidates
        local = np.arange(len(rows))
        for j in range(1, len(rows)):
            for i in range(j):
                if local[i] != local[j] and similar(i, j):
                    a, b = sorted((local[i], local[j]))
                    local[local == b] = a  # the earlier member stays the root
    pos = [row["pos"] for row in rows]
    for j, i in enumerate(local):
        rec_roots[pos[j]] = pos[i]
        if i != j:
            rec_sim[pos[j]] = min(
                (a.jaccard(b) for a, b in zip(sides[j], sides[i], strict=True)), default=1.0
            )


def near_counts(store: Store) -> dict[str, tuple[int, int]]:
    """Per kind: (records sharing a prompt cluster with an earlier record, records near-identical to an
    earlier record), from the tables as they are."""
    con = store.connect(near_dup_views(store))
    try:
        rows = con.sql(
            "SELECT kind, count(*) FILTER (WHERE NOT representative), "
            "count(*) FILTER (WHERE NOT coalesce(record_representative, true)) "
            "FROM near_duplicates GROUP BY kind ORDER BY kind"
        ).fetchall()
    finally:
        con.close()
    return {kind: (int(p), int(r)) for kind, p, r in rows}


_DUCK = {pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN", pa.float64(): "DOUBLE"}


def near_dup_views(store: Store) -> dict[str, str]:
    """The view ``near_duplicates``; the record-level columns read NULL in tables made before they existed
    (such tables are stale: the next ingest or build recomputes them)."""
    sql = parquet_select(store.root, "dedup/near_*.parquet", NEAR_SCHEMA)
    files = store.files("dedup/near_*.parquet")
    have = {name for f in files for name in pq.read_schema(f).names}
    missing = [f for f in NEAR_SCHEMA if files and f.name not in have]
    if missing:
        nulls = ", ".join(f'CAST(NULL AS {_DUCK[f.type]}) AS "{f.name}"' for f in missing)
        sql = f"SELECT *, {nulls} FROM ({sql})"
    return {"near_duplicates": sql}
