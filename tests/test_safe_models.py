"""Safe model loading: safetensors only, no remote code unless asked, nothing fetched unless allowed."""

from __future__ import annotations

import logging
import shutil

import pytest

from curation.models import (
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
