"""`curate serve`: run the deployments of prefect.yaml (schedules, parameters, concurrency limits) from one process.

prefect.yaml stays the single description of the deployments: `prefect deploy`
reads it for the production path (work pool + worker), and this module turns
the same entries into runner deployments served by ``prefect.serve`` on one box.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.core.safe_yaml import YAMLRefused, read_yaml_file

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "prefect.yaml"
#: Parameters that name paths: made absolute (relative to the directory `curate serve` runs in).
PATH_PARAMETERS = ("store", "landing", "policy", "report_out")


class DeploymentFileError(ValueError):
    """prefect.yaml is missing something `curate serve` needs."""


@dataclass
class DeploymentSpec:
    """One entry of prefect.yaml's ``deployments`` list, as `curate serve` uses it."""

    name: str
    entrypoint: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: dict[str, Any] | int | None = None
    description: str | None = None
    tags: list[str] = field(default_factory=list)


def load_specs(path: str | Path = DEFAULT_FILE, only: list[str] | None = None) -> list[DeploymentSpec]:
    """Read the deployments of a prefect.yaml (optionally only those named in ``only``)."""
    path = Path(path)
    try:
        doc = read_yaml_file(path, "deployments file") or {}  # bounded; a repeated key is an error
    except YAMLRefused as exc:
        raise DeploymentFileError(str(exc)) from None
    specs = []
    for i, entry in enumerate(doc.get("deployments") or []):
        for key in ("name", "entrypoint"):
            if not entry.get(key):
                raise DeploymentFileError(f"{path}: deployments[{i}] has no {key!r}")
        specs.append(
            DeploymentSpec(
                name=entry["name"],
                entrypoint=entry["entrypoint"],
                parameters=dict(entry.get("parameters") or {}),
                schedules=list(entry.get("schedules") or []),
                concurrency_limit=entry.get("concurrency_limit"),
                description=entry.get("description"),
                tags=list(entry.get("tags") or []),
            )
        )
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise DeploymentFileError(
                f"{path}: no deployment named {', '.join(unknown)}; have {', '.join(s.name for s in specs)}"
            )
        specs = [s for s in specs if s.name in only]
    if not specs:
        raise DeploymentFileError(f"{path}: no deployments to serve")
    return specs


def load_flow(entrypoint: str):
    """``flows/pipeline.py:landing_flow`` (or ``flows.pipeline:landing_flow``) -> the flow object."""
    module, _, attr = entrypoint.partition(":")
    if not attr:
        raise DeploymentFileError(f"entrypoint {entrypoint!r}: expected PATH.py:FLOW or module:FLOW")
    module = module.removesuffix(".py").replace("/", ".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise DeploymentFileError(f"entrypoint {entrypoint!r}: {exc}") from exc


def _schedule(raw: dict[str, Any], where: str):
    from prefect.schedules import Cron, Interval

    if "cron" in raw:
        return Cron(raw["cron"], timezone=raw.get("timezone"), active=raw.get("active", True))
    if "interval" in raw:
        return Interval(raw["interval"], timezone=raw.get("timezone"), active=raw.get("active", True))
    raise DeploymentFileError(f"{where}: a schedule needs 'cron' or 'interval' (rrule is not supported here)")


def _limit(raw: dict[str, Any] | int | None):
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    if raw is None or isinstance(raw, int):
        return raw
    return ConcurrencyLimitConfig(**raw)


def runner_deployments(specs: list[DeploymentSpec], overrides: dict[str, Any] | None = None) -> list:
    """Runner deployments for ``prefect.serve``: same schedules, parameters and concurrency limits."""
    out = []
    for spec in specs:
        flow_ = load_flow(spec.entrypoint)
        accepted = set(flow_.parameters.properties)
        params = spec.parameters | {k: v for k, v in (overrides or {}).items() if k in accepted}
        for key in PATH_PARAMETERS:
            if isinstance(params.get(key), str):
                params[key] = str(Path(params[key]).absolute())
        out.append(
            flow_.to_deployment(
                name=spec.name,
                schedules=[_schedule(s, spec.name) for s in spec.schedules],
                concurrency_limit=_limit(spec.concurrency_limit),
                parameters=params,
                description=spec.description,
                tags=spec.tags,
            )
        )
    return out


def serve(
    path: str | Path = DEFAULT_FILE,
    overrides: dict[str, Any] | None = None,
    only: list[str] | None = None,
    limit: int | None = 1,
) -> None:
    """Register the deployments and run their schedules until interrupted (Ctrl-C / SIGTERM).

    On the way out the deployments are paused, so no run piles up as "late"
    while nothing serves them; the next `curate serve` resumes them.
    """
    import signal

    from prefect import serve as prefect_serve

    deployments = runner_deployments(load_specs(path, only), overrides)
    stop = _Stop()
    previous = signal.signal(signal.SIGTERM, stop.interrupt)  # SIGTERM (systemd, docker stop) = Ctrl-C
    try:
        prefect_serve(*deployments, limit=limit)
    except KeyboardInterrupt:
        # Prefect catches the first interrupt itself; one that lands outside its handler (during start-up
        # or shutdown of its event loop) is the same request to stop, not an error.
        pass
    except Exception:
        # The interrupt can also land inside a library that wraps it in its own error (pydantic turns it
        # into a SchemaError when it arrives while Prefect imports its web server): still a stop.
        if not stop.requested:
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        pause([f"{d.flow_name}/{d.name}" for d in deployments])


class _Stop:
    """SIGTERM raises KeyboardInterrupt, like Ctrl-C, and remembers that a stop was asked for."""

    requested = False

    def interrupt(self, signum, frame) -> None:
        self.requested = True
        raise KeyboardInterrupt


def pause(names: list[str]) -> None:
    """Pause deployments by ``flow/deployment`` name (their schedules stop creating runs)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for name in names:
            client.pause_deployment(client.read_deployment_by_name(name).id)
