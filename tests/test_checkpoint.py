"""Checkpoint directories: Hugging Face layout, exact round trips, clear errors on damage."""

import json

import pytest
import torch
from transformers_check import assert_logits_match_transformers

from conftest import require
from tinyllm.checkpoint import load_checkpoint, save_checkpoint
from tinyllm.errors import TinyLLMError
from tinyllm.model import Transformer


def test_round_trip_is_exact(trained_checkpoint, tmp_path):
    model, tokenizer = load_checkpoint(trained_checkpoint)
    save_checkpoint(tmp_path / "copy", model, tokenizer)
    again, tokenizer2 = load_checkpoint(tmp_path / "copy")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert tokenizer2.encode("Zoë’s cat — 42!") == tokenizer.encode("Zoë’s cat — 42!")


def test_layout_is_hugging_face_llama(trained_checkpoint):
    config = json.loads((trained_checkpoint / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    from safetensors import safe_open

    with safe_open(str(trained_checkpoint / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "model.layers.0.self_attn.q_proj.weight" in names
    assert ("lm_head.weight" in names) == (not config["tie_word_embeddings"])
    assert (trained_checkpoint / "best" / "model.safetensors").is_file()


def test_existing_directory_is_refused_without_replace(trained_checkpoint, tmp_path):
    model, tokenizer = load_checkpoint(trained_checkpoint)
    (tmp_path / "taken").mkdir()
    with pytest.raises(TinyLLMError, match="already exists; pass --force"):
        save_checkpoint(tmp_path / "taken", model, tokenizer)


def test_failed_save_leaves_nothing_behind(trained_checkpoint, tmp_path, monkeypatch):
    model, tokenizer = load_checkpoint(trained_checkpoint)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("tinyllm.checkpoint.save_file", broken)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "new", model, tokenizer)
    assert list(tmp_path.iterdir()) == []


def copy_checkpoint(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_is_named(trained_checkpoint, tmp_path, missing):
    ckpt = copy_checkpoint(trained_checkpoint, tmp_path / "c")
    (ckpt / missing).unlink()
    with pytest.raises(TinyLLMError, match=f"missing {missing}"):
        load_checkpoint(ckpt)


def test_corrupt_safetensors_is_reported(trained_checkpoint, tmp_path):
    ckpt = copy_checkpoint(trained_checkpoint, tmp_path / "c")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TinyLLMError, match="cannot read safetensors.*damaged"):
        load_checkpoint(ckpt)


def test_impossible_config_is_reported(trained_checkpoint, tmp_path):
    ckpt = copy_checkpoint(trained_checkpoint, tmp_path / "c")
    config = json.loads((ckpt / "config.json").read_text())
    config["num_attention_heads"] = 3
    del config["head_dim"]
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(TinyLLMError, match="config.json: config: d_model=64 is not divisible by n_heads=3"):
        load_checkpoint(ckpt)


def test_shape_mismatch_is_reported(trained_checkpoint, tmp_path):
    ckpt = copy_checkpoint(trained_checkpoint, tmp_path / "c")
    config = json.loads((ckpt / "config.json").read_text())
    config["intermediate_size"] = 256
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(TinyLLMError, match="has shape .* config.json implies"):
        load_checkpoint(ckpt)


def test_transformers_loads_the_checkpoint_unchanged(trained_checkpoint):
    require("transformers", "pip install -e '.[test]'")
    assert_logits_match_transformers(trained_checkpoint)


@pytest.mark.parametrize("n_kv_heads, tie", [(4, False), (1, True)])
def test_transformers_parity_across_shapes(trained_checkpoint, tmp_path, n_kv_heads, tie):
    """Random weights in other shapes (MHA untied, MQA tied) load into transformers identically."""
    require("transformers", "pip install -e '.[test]'")
    model, tokenizer = load_checkpoint(trained_checkpoint)
    torch.manual_seed(3)
    other = Transformer(model.config.replace(n_kv_heads=n_kv_heads, tie_embeddings=tie))
    save_checkpoint(tmp_path / "other", other, tokenizer)
    assert_logits_match_transformers(tmp_path / "other")


def test_written_files_get_ordinary_permissions(trained_checkpoint, tmp_path):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); the results must not stay private."""
    import os
    import stat

    model, tokenizer = load_checkpoint(trained_checkpoint)
    save_checkpoint(tmp_path / "perm", model, tokenizer)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "perm").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "perm" / "model.safetensors").stat().st_mode) == 0o666 & ~mask
