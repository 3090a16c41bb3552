"""SQL of every catalog view: the base kinds, then score and curation views where present."""

from __future__ import annotations

from typing import TYPE_CHECKING

from curation.store import BASE_VIEWS, parquet_select

if TYPE_CHECKING:
    from curation.store import Store


def base_views(store: Store) -> dict[str, str]:
    return {name: parquet_select(store.root, glob, schema) for name, (glob, schema) in BASE_VIEWS.items()}


def all_views(store: Store) -> dict[str, str]:
    """Every view, in dependency order (later views may select from earlier ones)."""
    views = base_views(store)
    from curation.dedup import near_dup_views

    views.update(near_dup_views(store))
    from curation.build import curated_views

    try:
        from curation.scoring.views import score_views
    except ImportError:  # scoring not installed in a minimal checkout
        return views | curated_views(store)
    views.update(score_views(store))
    views.update(curated_views(store))
    return views
