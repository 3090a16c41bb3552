"""`curate train sft|rescue|rm`: the bundled trainers on the command line.

Every field of the trainer's config dataclass (ours plus all of transformers.TrainingArguments) is a
flag (``--learning_rate 1e-5``) and a YAML key (``--config run.yaml``; flags override the file), as
with TRL's scripts. ``curate train rm --help`` lists them all. Scale out with the same command under
``accelerate launch -m curation.cli train rm ...`` or ``torchrun``.
"""

from __future__ import annotations

import json
import os
import sys

import typer

TRAINERS = {
    "sft": ("training.sft", "SFTConfig", "SFT with per-sample UAL label smoothing and weights (sft shards)."),
    "rescue": ("training.rescue", "RescueConfig", "RESCUE ranking with a partial order (ranking shards)."),
    "rm": (
        "training.rm",
        "RMConfig",
        "Quality-aware reward model: margins, soft labels, weights (rm shards).",
    ),
}


def parse_config(kind: str, argv: list[str]):
    """The config dataclass for ``kind`` from ``--config FILE.yaml`` and flags (flags win)."""
    import importlib

    from transformers import HfArgumentParser

    from curation.core.safe_yaml import read_yaml_file

    module, cls_name, _ = TRAINERS[kind]
    cls = getattr(importlib.import_module(module), cls_name)
    parser = HfArgumentParser(cls, prog=f"curate train {kind}")
    parser.add_argument("--config", default=None, help="YAML file with any of these options as keys.")
    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a YAML file")
        values = read_yaml_file(argv[i + 1], "train config") or {}  # bounded; a repeated key is an error
        if not isinstance(values, dict):
            raise ValueError(f"{argv[i + 1]}: expected a mapping of option: value")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{argv[i + 1]}: unknown option(s) {', '.join(unknown)}; see `curate train {kind} --help`"
            )
        parser.set_defaults(**values)
        del argv[i : i + 2]
    config = parser.parse_args_into_dataclasses(args=argv)[0]
    return config, parser


def _run(kind: str, argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        _, parser = parse_config(kind, ["--shards", "x", "--model", "x"])
        print(parser.format_help())
        return
    import importlib

    from curation.cli.common import fail
    from curation.core.models import ModelError
    from training.shards import ShardError

    try:
        config, _ = parse_config(kind, argv)
        result = importlib.import_module(TRAINERS[kind][0]).train(config)
    except (ShardError, ModelError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))  # one line, printed as data
        return
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch / torchrun only the main process reports
        return
    summary = {k: v for k, v in result.items() if k != "log_history"}
    sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")


app = typer.Typer(
    help="Train on curated shards: sft (UAL), rescue (ranking), rm (reward model).", no_args_is_help=True
)
_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _command(kind: str, help_text: str) -> None:
    def command(ctx: typer.Context) -> None:
        _run(kind, list(ctx.args))

    command.__doc__ = help_text + " Options: `curate train " + kind + " --help`."
    app.command(kind, context_settings=_SETTINGS, help=command.__doc__)(command)


for _kind, (_, _, _help) in TRAINERS.items():
    _command(_kind, _help)
