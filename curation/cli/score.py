"""`curate score <scorer>`: run one scorer (or all) and print a summary table."""

from __future__ import annotations

import json

import typer

from curation.cli.common import StoreOpt


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def score(
    scorer: str = typer.Argument(
        ...,
        help="length_bias, reward_margin, uncertainty, spurious_groups, semantic_dedup, embeddings, "
        "or all (every view scorer that runs offline with defaults); any scorer in the registry "
        "(curation/scoring/contract.py).",
    ),
    store: str | None = StoreOpt,
    model: list[str] = typer.Option(
        [],
        "--model",
        "-m",
        help="reward_margin: a reward model folder or hub id (repeatable: an ensemble); "
        "uncertainty --source entropy: the causal LM; reward_margin --backend judge and uncertainty "
        "--source judge: the judge's model name.",
    ),
    backend: str | None = typer.Option(
        None,
        help="reward_margin: 'models' (pretrained RMs, the default with --model), 'crossfit', or 'judge' "
        "(an LLM judge behind an OpenAI-compatible endpoint, asked in both orders: --model NAME "
        "--param base_url=URL, or $CURATE_JUDGE_URL / $CURATE_JUDGE_MODEL; key from "
        "$CURATE_JUDGE_API_KEY or $OPENAI_API_KEY).",
    ),
    source: str | None = typer.Option(
        None, help="uncertainty: rubric-embedding (default), judge, entropy or column."
    ),
    finetune: bool = typer.Option(
        False, "--finetune", help="reward_margin crossfit: fine-tune the encoder per fold (GPU)."
    ),
    where: str | None = typer.Option(None, help="SQL filter over the records' view (e.g. \"source = 'x'\")."),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="Any other scorer parameter, KEY=VALUE (JSON value), repeatable."
    ),
    device: str | None = typer.Option(None, help="auto (default), cpu, cuda, cuda:1 ..."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code."),
    allow_download: bool = typer.Option(False, "--allow-download", help="Let hub ids be downloaded."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    workers: int = typer.Option(
        1,
        "--workers",
        "-w",
        help="Compute the uncached per-record model work on N Ray workers (a local Ray instance unless "
        "--ray-address; needs the 'ray' extra). Same tables as 1.",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Join this Ray cluster (e.g. ray://head:10001 or auto) for --workers."
    ),
    gpus_per_worker: float | None = typer.Option(
        None, "--gpus-per-worker", help="GPUs per Ray worker (fractions allowed; default 1, or a fair share)."
    ),
) -> None:
    """Score records; cached per record, so reruns compute only what is new. Killed runs resume."""
    from curation import catalog
    from curation.cli.common import console, esc, fail, open_store, print_table
    from curation.core.errors import StoreError
    from curation.core.models import ModelError
    from curation.scoring import RESULT_SCORERS, registry, run_scorer
    from curation.scoring.chat_client import JudgeError
    from curation.scoring.parallel import ParallelError, require_ray

    if workers > 1 or ray_address:
        try:
            require_ray()
        except ParallelError as exc:
            fail(str(exc))
    st = open_store(store)
    scorers = registry()
    params: dict = {
        "models": model or None,
        "backend": backend,
        "source": source,
        "finetune": finetune or None,
        "where": where,
        "device": device,
        "trust_remote_code": trust_remote_code or None,
        "allow_network": allow_download or None,
        "progress": progress,
    }
    for item in param:
        if "=" not in item:
            fail(f"--param {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        params[k.strip()] = _value(v.strip())
    names = list(RESULT_SCORERS) if scorer == "all" else [scorer]
    if scorer != "all" and scorer not in scorers:
        fail(f"unknown scorer {scorer!r}; choose one of {', '.join(scorers)} or all")
    import pyarrow as pa

    rows = []
    for name in names:
        accepted = scorers[name].accepts()
        given = {k: v for k, v in params.items() if v is not None}
        unknown = sorted(set(given) - set(accepted))
        if unknown and scorer != "all":
            fail(f"{name} does not take {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")
        kwargs = {k: v for k, v in given.items() if k in accepted}
        if gpus_per_worker is not None:
            kwargs["gpus_per_worker"] = gpus_per_worker
        try:
            summary = run_scorer(st, name, workers=workers, ray_address=ray_address, **kwargs)
        except (StoreError, ModelError, ValueError, JudgeError, ParallelError) as exc:
            if scorer == "all" and str(exc).startswith("no "):
                console.print(f"[dim]{name}: skipped, {esc(exc)}[/]")
                continue
            fail(f"{name}: {exc}")
            return
        rows.append(summary)
    catalog.refresh(st)
    table = pa.table(
        {
            "scorer": [s.scorer for s in rows],
            "records": [s.records for s in rows],
            "computed": [s.computed for s in rows],
            "cached": [s.cached for s in rows],
            "up to date": [s.skipped for s in rows],
            "seconds": [round(s.seconds, 2) for s in rows],
            "key": [s.key for s in rows],
        }
    )
    print_table(table, None, "scores")
    for s in rows:
        if s.report:
            rep = {k: v for k, v in s.report.items() if not isinstance(v, list | dict)}
            print_table(
                pa.table(
                    {
                        "metric": list(rep),
                        "value": [str(round(v, 4)) if isinstance(v, float) else str(v) for v in rep.values()],
                    }
                ),
                None,
                f"{s.scorer} report",
            )
    console.print(f"[dim]views: scored_pairs, scored_sft, scored_rankings, score_groups in {esc(st.root)}[/]")
