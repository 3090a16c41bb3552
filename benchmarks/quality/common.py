"""Shared pieces of the quality experiments: sizes, result rows, the machine, stores and trainings.

Every experiment goes through the public Python API of the pipeline (the same functions the
``curate`` CLI calls): ``ingest_paths`` -> ``run_scorer`` -> ``build`` -> ``training.rm.train`` /
``training.rm.evaluate``. Nothing here computes a metric that the pipeline already computes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
POLICIES = HERE / "policies"
SHARED = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass
class Sizes:
    """How big each experiment is; ``tiny`` keeps every code path but only tens of pairs and a few steps."""

    seeds: tuple[int, ...] = (0, 1, 2)
    noise_levels: tuple[float, ...] = (0.2, 0.4)
    test_fraction: float = 0.2
    rm_max_length: int = 64  # left truncation: the final assistant turn (what differs in a pair) stays
    rm_batch: int = 8
    rm_lr: float = 1e-4  # few steps: 5e-5 left the loss flat at 0.693 after 20 steps in a probe
    rm_epochs: float = 1.0
    hh_train_limit: int | None = 600  # random subset of the 1,818 train pairs (None: all); CPU budget
    hh_test_limit: int | None = None
    lb_settings: tuple[str, ...] = ("issue", "chosen_longer")  # experiment 2's settings (length_bias.py)
    lb_arms: tuple[str, ...] = ("plain", "poe_length", "poe_noisy", "poe_length_nors")  # and its arms
    lb_instructions: int | None = None  # issue setting: a seeded subset of the 805 instructions (None: all)
    lb_train_limit: int | None = 320  # chosen_longer setting: train pairs
    lb_test_limit: int | None = None
    lb_max_length: int = 256  # the setup
    groups_train_limit: int | None = 600
    sft_max_length: int = 256
    sft_steps: int = 300
    sft_batch: int = 8
    sft_per_source: int = 400
    sft_eval_per_source: int = 100
    scorer_params: dict[str, Any] = field(default_factory=dict)  # reward_margin crossfit options
    groups_params: dict[str, Any] = field(default_factory=dict)  # spurious_groups options
    ual_params: dict[str, Any] = field(default_factory=dict)  # uncertainty scorer options
    sft_lr: float = 1e-3  # the tiny LM starts from random weights
    dro_eta: float = 0.1  # group DRO step size (methods.md default 0.01 barely moves in ~50 steps)

    def override(self, item: str) -> None:
        """Set one field from "name=value" (value parsed as the field's type; "none" for None)."""
        name, sep, raw = item.partition("=")
        if not sep or name not in {f.name for f in fields(self)}:
            raise ValueError(f"expected FIELD=VALUE with FIELD one of {sorted(f.name for f in fields(self))}")
        current = getattr(self, name)
        if raw.lower() == "none":
            value: Any = None
        elif isinstance(current, bool):
            value = raw.lower() in ("1", "true", "yes")
        elif isinstance(current, tuple):
            value = tuple(type(current[0])(x) for x in raw.split(",")) if current else tuple(raw.split(","))
        elif isinstance(current, dict):
            value = json.loads(raw)
        elif current is None or isinstance(current, int | float | str):
            kind = type(current) if current is not None else (int if raw.lstrip("-").isdigit() else float)
            value = kind(raw)
        else:
            raise ValueError(f"cannot set {name} from the command line")
        setattr(self, name, value)

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(
            seeds=(0,),
            rm_max_length=32,
            rm_batch=8,
            hh_train_limit=48,
            hh_test_limit=24,
            lb_instructions=40,
            lb_train_limit=32,
            lb_test_limit=24,
            lb_max_length=32,
            groups_train_limit=48,
            sft_max_length=64,
            sft_steps=4,
            sft_batch=4,
            sft_per_source=16,
            sft_eval_per_source=8,
            scorer_params={"max_length": 64, "repeats": 1},
            ual_params={"max_length": 64},
        )


@dataclass
class Row:
    """One line of the results table: an arm of an experiment, its metric over seeds."""

    experiment: str
    arm: str
    setting: str
    metric: str
    values: list[float]
    seeds: list[int]
    wall_seconds: float
    command: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": self.mean, "std": self.std}


def machine() -> dict[str, str]:
    """CPU model, core count, torch version and load average at the time of the call."""
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import torch

    return {
        "cpu": model,
        "nproc": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


class Clock:
    """Wall time of a block, in seconds."""

    def __enter__(self) -> Clock:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def ingest(store_dir: Path, path: Path, source: str, reader: str):
    """``curate ingest <path> --store <store_dir> --reader <reader> --source <source>``."""
    from curation.core.store import Store
    from curation.ingest.pipeline import IngestOptions, ingest_paths

    store = Store(store_dir)
    results = ingest_paths(store, [str(path)], IngestOptions(reader=reader, source=source))
    for r in results:
        if r.error:
            raise RuntimeError(f"ingest of {path} failed: {r.error}")
    return store


def build(store, policy, name: str | None = None) -> Path:
    """``curate build benchmarks/quality/policies/<policy>.yaml --store ... [--name ...]``; ``policy`` is a
    file stem under policies/ or a ``curation.builds.policy.Policy`` (a policy file with harness-set values)."""
    from curation.builds.build import build as do_build

    return do_build(store, POLICIES / f"{policy}.yaml" if isinstance(policy, str) else policy, name=name).path


def train_rm(shards: Path, out: Path, sizes: Sizes, seed: int, **options: Any) -> dict[str, Any]:
    """``curate train rm --shards <shards> --model bundled --seed <seed> ...`` (MiniLM, left truncation)."""
    from curation.core.models import bundled_minilm_path
    from training.rm import RMConfig, train

    cfg = RMConfig(
        shards=str(shards),
        model=str(bundled_minilm_path()),
        output_dir=str(out),
        max_length=options.pop("max_length", sizes.rm_max_length),
        per_device_train_batch_size=sizes.rm_batch,
        learning_rate=sizes.rm_lr,
        num_train_epochs=sizes.rm_epochs,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        seed=seed,
        data_seed=seed,
        eval_split=None,
        save_strategy="no",
        report_to=[],
        logging_steps=10,
        disable_tqdm=True,
        use_cpu=True,
        **options,
    )
    return train(cfg)


def eval_rm(model_dir: Path, shards: Path, split: str = "train") -> dict[str, float]:
    """Held-out metrics of a trained reward model on every pair of a build split."""
    from training.rm import evaluate

    return evaluate(model_dir, shards, split=split)


def rm_length_shares(shards: Path) -> dict[str, dict[str, float | None]]:
    """Per source: the chosen-longer share of the raw pairs and of the build's rm train shard (unweighted and
    weighted by the shard weight), from the manifest's ``length_diagnostics`` (characters, ties left out)."""
    manifest = json.loads((shards / "manifest.json").read_text())
    out = {}
    for src, d in (manifest.get("length_diagnostics") or {}).get("by_source", {}).items():
        train = (d.get("curated_by_split") or {}).get("train") or {}
        out[src] = {
            "raw": d["raw"]["share"],
            "train": train.get("share"),
            "train_weighted": train.get("weighted_share"),
        }
    return out


def count_rows(shards: Path, consumer: str = "rm", split: str = "train") -> int:
    manifest = json.loads((shards / "manifest.json").read_text())
    return sum(s["rows"] for s in manifest["shards"] if s["consumer"] == consumer and s["split"] == split)
