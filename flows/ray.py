"""Scoring on a Ray cluster through prefect-ray's task runner (optional extra: ``pip install curate[ray]``).

The score flow is unchanged: only its task runner differs. Each scorer task
runs on a Ray worker, reading and writing the store by path, so the store must
be on a filesystem every Ray node sees (local disk for a local Ray instance,
a shared mount for a cluster). Ray workers report task states to the Prefect
API: use a Prefect server (PREFECT_API_URL), not the temporary local one.
"""

from __future__ import annotations

from typing import Any


def ray_task_runner(address: str | None = None, **init_kwargs: Any):
    """A RayTaskRunner: ``address=None`` starts a local Ray instance, ``"ray://head:10001"`` joins a cluster."""
    try:
        from prefect_ray.task_runners import RayTaskRunner
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise ImportError("scoring on Ray needs the optional extra: pip install 'curate[ray]'") from exc
    return RayTaskRunner(address=address, init_kwargs=init_kwargs or None)


def score_on_ray(
    store: str,
    scorers: dict[str, dict[str, Any]] | None = None,
    address: str | None = None,
    **init_kwargs: Any,
) -> dict[str, Any]:
    """Run flows.pipeline.score_flow with its scorer tasks on Ray (same cache keys, same results)."""
    from flows.pipeline import score_flow

    return score_flow.with_options(task_runner=ray_task_runner(address, **init_kwargs))(store, scorers)
