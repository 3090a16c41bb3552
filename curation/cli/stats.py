"""`curate stats`: what the store holds, per source, and what each step did to it."""

from __future__ import annotations

from curation.cli.common import StoreOpt, console, open_store, print_table


def stats(store: str | None = StoreOpt) -> None:
    """Counts per kind and source, quarantine reasons, duplicates, near-duplicates at both levels, and
    the chosen-longer share of the pairs per source (raw, per quality class, and in each build)."""
    import pyarrow as pa

    from curation.builds.build import build_names, read_manifest, store_diagnostics
    from curation.builds.length_diagnostics import DEFINITION, build_rows, raw_rows
    from curation.catalog import query as run_query
    from curation.ingest.dedup import stale_kinds

    st = open_store(store)
    print_table(
        run_query(
            st,
            """
        SELECT source, kind, sum(rows_read) AS rows_read,
               sum(accepted + quarantined + duplicates - records_out) AS rows_quarantined,
               sum(records_out) AS records, sum(accepted) AS accepted,
               sum(records_out - accepted - duplicates) AS records_quarantined, sum(duplicates) AS duplicates
        FROM ingest_runs GROUP BY ALL ORDER BY kind, source""",
        ),
        None,
        "records by source",
    )
    print_table(
        run_query(
            st,
            """
        SELECT source, field, regexp_replace(reason, '[0-9]+', 'N', 'g') AS reason, count(*) AS rows
        FROM quarantine GROUP BY ALL ORDER BY rows DESC""",
        ),
        30,
        "quarantine reasons",
    )
    print_table(
        run_query(
            st,
            """
        SELECT kind, count(DISTINCT cluster) AS prompt_clusters, count(*) AS records_in_clusters,
               count(*) FILTER (WHERE NOT representative) AS same_prompt_as_earlier,
               count(*) FILTER (WHERE NOT record_representative) AS near_identical_to_earlier
        FROM near_duplicates GROUP BY kind ORDER BY kind""",
        ),
        None,
        "near-duplicates (the default policy drops near-identical pairs and rankings, and SFT records "
        "by prompt)",
    )
    stale = stale_kinds(st)
    if stale:
        console.print(
            f"[yellow]near-duplicate marks are stale for {', '.join(stale)}[/] (units ingested since they "
            "were made); the next `curate ingest` or `curate build` recomputes them"
        )
    raw = store_diagnostics(st)
    if raw:
        print_table(pa.Table.from_pylist(raw_rows(raw)), None, "chosen-longer share of the pairs, by source")
        builds = [
            row
            for name in build_names(st)
            for row in build_rows(name, read_manifest(st, name).get("length_diagnostics") or {})
        ]
        if builds:
            print_table(
                pa.Table.from_pylist(builds), None, "chosen-longer share: raw pairs against rm shards"
            )
        console.print(
            f"[dim]{DEFINITION}; per quality class once `curate score reward_margin` has run "
            "(incorrect: the label is likely wrong; ambiguous: weak preference; clean: the rest)[/]"
        )
