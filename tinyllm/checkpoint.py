"""Checkpoint directories: a Hugging Face Llama model directory that tinyllm reads and writes.

    config.json             LlamaConfig keys (+ a "tinyllm" section for our metadata)
    model.safetensors       float32 weights under Hugging Face tensor names
    tokenizer.json          the byte-level BPE tokenizer (Hugging Face `tokenizers`)
    tokenizer_config.json   no BOS, ChatML chat template (for transformers' AutoTokenizer)

`transformers.LlamaForCausalLM.from_pretrained(dir)` loads it unchanged. New checkpoints are
built in a temporary directory and renamed into place; weights updated inside an existing
directory are replaced file by file, atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinyllm.config import ModelConfig
from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_directory, atomic_write
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
_CHUNK = 1 << 20
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)


def digest_files(paths: list[Path], h: "hashlib._Hash") -> None:
    """Feed each file's name and bytes to `h`."""
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)


def checkpoint_digest(checkpoint: Path) -> str:
    """sha256 of a checkpoint's config, weights and tokenizer: which model this is."""
    h = hashlib.sha256()
    digest_files([checkpoint / CONFIG_FILE, checkpoint / WEIGHTS_FILE, checkpoint / TOKENIZER_FILE], h)
    return h.hexdigest()


def to_hf_names(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Our module names → Hugging Face's (`model.` prefix; the tied head is not stored)."""
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            if not tied:
                out[name] = tensor
        else:
            out["model." + name] = tensor
    return out


def from_hf_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name.removeprefix("model."): t for name, t in tensors.items()}


def save_weights(path: Path, model: Transformer, metadata: dict[str, str] | None = None) -> None:
    """Write model.safetensors atomically (float32, contiguous, HF names)."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in model.state_dict().items()}
    tensors = to_hf_names(state, model.config.tie_embeddings)
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})}))


def write_checkpoint_files(directory: Path, model: Transformer, tokenizer: Tokenizer) -> None:
    """Write every checkpoint file into an existing directory, each atomically."""
    model.config.save(directory / CONFIG_FILE)
    save_weights(directory / WEIGHTS_FILE, model)
    tokenizer.save(directory / TOKENIZER_FILE)
    tokenizer.save_hf_config(directory / TOKENIZER_CONFIG_FILE)


def save_checkpoint(path: str | Path, model: Transformer, tokenizer: Tokenizer, replace: bool = False) -> None:
    """Write a complete checkpoint directory at `path`, all at once (temp dir, then rename)."""
    path = Path(path)
    if path.exists() and not replace:
        raise TinyLLMError(f"{path}: already exists; pass --force to overwrite it")
    with atomic_directory(path, replace=replace) as tmp:
        write_checkpoint_files(tmp, model, tokenizer)


def check_checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise TinyLLMError(f"{path}: no such checkpoint directory")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise TinyLLMError(f"{path}: not a complete checkpoint, missing {', '.join(missing)}; "
                           "point at a directory written by `tinyllm train`")
    return path


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise TinyLLMError(f"{path}: cannot read safetensors ({e}); the file is damaged, "
                           "re-save or re-train the checkpoint") from None


def load_weights(model: Transformer, path: Path) -> None:
    tensors = from_hf_names(read_tensors(path))
    expected = {k: v for k, v in model.state_dict().items()
                if not (k == "lm_head.weight" and model.config.tie_embeddings)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise TinyLLMError(f"{path}: tensors do not match config.json (missing: {missing[:4]}, "
                           f"unexpected: {unexpected[:4]})")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise TinyLLMError(f"{path}: tensor {name} has shape {tuple(t.shape)}, config.json implies "
                               f"{tuple(expected[name].shape)}")
    model.load_state_dict(tensors, strict=False)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer]:
    """Load a float32 checkpoint directory as an eval-mode model on `device` and its tokenizer."""
    path = check_checkpoint_dir(path)
    config = ModelConfig.load(path / CONFIG_FILE)
    tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
    if tokenizer.vocab_size != config.vocab_size:
        raise TinyLLMError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but config.json says "
                           f"vocab_size={config.vocab_size}")
    model = Transformer(config)
    load_weights(model, path / WEIGHTS_FILE)
    return model.to(device).eval(), tokenizer
