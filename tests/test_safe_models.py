"""Safe model loading: safetensors only, no remote code unless asked, nothing fetched unless allowed."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import pytest

from curation.core.models import (
    ModelError,
    ModelSpec,
    describe,
    encode_untruncated,
    fingerprint,
    lifted_length_limit,
    load_sequence_classifier,
    load_tokenizer,
    resolve,
)
from tests.fixtures.fifos import unblock_fifos


def test_bundled_minilm_loads_as_a_reward_model_offline(minilm):
    model = load_sequence_classifier(ModelSpec(str(minilm)))
    assert model.config.num_labels == 1
    assert describe(ModelSpec())["architecture"] == "BertModel"


def test_pickle_only_checkpoint_is_refused_with_an_explanation(tmp_path, minilm):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm / name, folder / name)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(minilm / "model.safetensors")), folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pickle checkpoints found \(pytorch_model\.bin\).*arbitrary code"):
        ModelSpec(str(folder)).path()


def test_hub_id_is_never_fetched_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub

    calls = []
    real = huggingface_hub.snapshot_download

    def spy(repo_id, **kw):
        calls.append(kw.get("local_files_only"))
        return real(repo_id, **kw)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    with pytest.raises(ModelError, match="--allow-download"):
        resolve("some-org/some-reward-model")
    assert calls == [True]


def test_remote_code_is_off_unless_the_user_says_so(minilm, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    seen = {}
    real = AutoModelForSequenceClassification.from_pretrained

    def spy(path, **kw):
        seen.update(kw)
        return real(path, **kw)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", spy)
    load_sequence_classifier(ModelSpec(str(minilm)))
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True
    load_sequence_classifier(ModelSpec(str(minilm), trust_remote_code=True))
    assert seen["trust_remote_code"] is True


def test_fingerprint_follows_content_not_location(tmp_path, minilm):
    copy = tmp_path / "copy"
    shutil.copytree(minilm, copy)
    assert fingerprint(copy) == fingerprint(minilm)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("384", "385", 1))
    assert fingerprint(copy) != fingerprint(minilm)


def test_whole_texts_are_encoded_without_the_overlong_warning(minilm):
    """Texts encoded only to be counted or cut are no 'indexing errors': no warning, and the tokenizer's
    limit is back afterwards (also after an error)."""
    warned: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(handler)
    try:
        tok = load_tokenizer(ModelSpec(str(minilm)))
        limit = tok.model_max_length
        long = " ".join(["word"] * (limit + 50))
        (ids,) = encode_untruncated(tok, [long], add_special_tokens=False)
        assert len(ids) == limit + 50 and tok.model_max_length == limit
        with pytest.raises(ValueError), lifted_length_limit(tok):
            tok(12345)  # not a text
        assert tok.model_max_length == limit
        assert not any("indexing errors" in m for m in warned)
        tok([long])  # the plain call does warn: the check above can fail
        assert any("indexing errors" in m for m in warned)
    finally:
        logger.removeHandler(handler)


# ------------------------------------------- safetensors only, enforced by curate (issue 23 item 13)
def _copy_config(minilm, folder):
    folder.mkdir()
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        shutil.copy(minilm / name, folder / name)
    return folder


def _index(folder, target: str) -> None:
    from safetensors import safe_open

    with safe_open(str(folder.parent / "real.safetensors"), framework="numpy") as fh:
        keys = list(fh.keys())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": dict.fromkeys(keys, target)})
    )


def refused_models(tmp_path, minilm) -> dict[str, tuple[object, str]]:
    """Model folders curate must refuse, each with the part of the message that says why."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(minilm / "model.safetensors"))
    shutil.copy(minilm / "model.safetensors", tmp_path / "real.safetensors")
    out = {}
    f = _copy_config(minilm, tmp_path / "pickle_only")
    torch.save(state, f / "pytorch_model.bin")
    out["pickle_only"] = (f, r"only pickle checkpoints found \(pytorch_model\.bin\)")
    f = _copy_config(minilm, tmp_path / "fake")
    (f / "model.safetensors").write_bytes(b"not a safetensors file at all")
    out["fake"] = (f, r"model\.safetensors: not a valid safetensors file")
    f = _copy_config(minilm, tmp_path / "truncated")
    data = (minilm / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(data[: len(data) // 2])
    out["truncated"] = (f, r"model\.safetensors: not a valid safetensors file")
    f = _copy_config(minilm, tmp_path / "index_to_bin")
    torch.save(state, f / "pytorch_model.bin")
    _index(f, "pytorch_model.bin")
    out["index_to_bin"] = (f, r"names 'pytorch_model\.bin'; curate loads \.safetensors weights only")
    f = _copy_config(minilm, tmp_path / "index_out")
    _index(f, "../real.safetensors")
    out["index_out"] = (f, r"names '\.\./real\.safetensors'; every weight file must be in the model folder")
    f = _copy_config(minilm, tmp_path / "index_missing")
    _index(f, "model-00001-of-00002.safetensors")
    out["index_missing"] = (f, r"names 'model-00001-of-00002\.safetensors', which is not in")
    f = _copy_config(minilm, tmp_path / "index_garbage")
    (f / "model.safetensors.index.json").write_text("[1, 2")
    out["index_garbage"] = (f, r"not a safetensors index with a weight_map")
    f = tmp_path / "st_module_out"
    shutil.copytree(minilm, f)
    (f / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "../pickle_only"}]))
    out["st_module_out"] = (f, r"module path '\.\./pickle_only' leaves the model folder")
    f = tmp_path / "st_module_pickle"
    shutil.copytree(minilm, f)
    (f / "2_Dense").mkdir()
    torch.save({"linear.weight": torch.zeros(4, 384)}, f / "2_Dense" / "pytorch_model.bin")
    modules = json.loads((f / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (f / "modules.json").write_text(json.dumps(modules))
    out["st_module_pickle"] = (f, r"2_Dense: this sentence-transformers module has only pickle weights")
    # round three: a config.json that is not a JSON object (a traceback from curate's own describe())
    for name, text in (("config_garbage", "{nope"), ("config_list", "[1, 2]"), ("config_string", '"bert"')):
        f = tmp_path / name
        shutil.copytree(minilm, f)
        (f / "config.json").write_text(text)
        out[name] = (f, r"config\.json: not a JSON model config")
    for name, target in (("weights_fifo", "model.safetensors"), ("tokenizer_fifo", "tokenizer.json")):
        f = tmp_path / name  # a pipe: every load hung, waiting for a writer
        shutil.copytree(minilm, f)
        (f / target).unlink()
        os.mkfifo(f / target)
        out[name] = (f, rf"{re.escape(target)}: not a regular file")
    unblock_fifos(
        [tmp_path / "weights_fifo" / "model.safetensors", tmp_path / "tokenizer_fifo" / "tokenizer.json"]
    )
    f = tmp_path / "weights_device"
    shutil.copytree(minilm, f)
    (f / "model.safetensors").unlink()
    (f / "model.safetensors").symlink_to("/dev/zero")
    out["weights_device"] = (f, r"model\.safetensors: not a regular file")
    f = _copy_config(minilm, tmp_path / "huge_header")  # a header length of 2**62 bytes: never allocated
    (f / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")
    out["huge_header"] = (f, r"model\.safetensors: not a valid safetensors file .*header too large")
    return out


def test_every_unsafe_folder_is_refused_before_transformers_sees_it(tmp_path, minilm, monkeypatch):
    """An index naming a .bin reached torch.load; a fake safetensors file reached transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    def never(*_a, **_k):
        raise AssertionError("transformers was given a folder curate should have refused")

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", never)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", never)
    for name, (folder, why) in refused_models(tmp_path, minilm).items():
        with pytest.raises(ModelError, match=why):
            load_sequence_classifier(ModelSpec(str(folder)))
        with pytest.raises(ModelError, match=why):
            load_tokenizer(ModelSpec(str(folder)))
        assert name


def test_safetensors_behind_symlinks_still_load(tmp_path, minilm):
    """The Hugging Face cache keeps weights as symlinks into blobs/: those are fine."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    shutil.copy(minilm / "model.safetensors", blobs / "abc123")
    snap = _copy_config(minilm, tmp_path / "snapshot")
    os.symlink(blobs / "abc123", snap / "model.safetensors")
    assert load_sequence_classifier(ModelSpec(str(snap))).config.num_labels == 1


def test_score_and_train_print_one_line_for_a_refused_model(tmp_path, minilm, shared_data):
    from typer.testing import CliRunner

    from curation.builds.build import build
    from curation.cli import app
    from curation.core.store import Store
    from tests.fixtures.inputs import subset_lines
    from tests.fixtures.stores import ingest

    store = Store(tmp_path / "store")
    ingest(
        store,
        [subset_lines(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", tmp_path / "hh.jsonl", 12)],
    )
    shards = build(store, "default", "v1").path
    runner = CliRunner()
    (tmp_path / "models").mkdir()
    for name, (folder, why) in refused_models(tmp_path / "models", minilm).items():
        for args in (
            ["score", "reward_margin", "--model", str(folder), "--store", str(store.root), "--no-progress"],
            [
                "train",
                "rm",
                "--shards",
                str(shards),
                "--model",
                str(folder),
                "--output_dir",
                str(tmp_path / "o"),
            ],
        ):
            res = runner.invoke(app, args)
            assert res.exit_code == 1, (name, args[0], res.output)
            assert res.output.startswith("error: ") and "Traceback" not in res.output, (name, res.output)
            assert re.search(why, " ".join(res.output.split())), (name, args[0], res.output)
