"""Quantized checkpoint directories: written once, atomically; read into a `QuantizedTransformer`.

    config.json             the float checkpoint's config plus "quantization_config" (below)
    model.safetensors       <name>.codes / .scales (/ .mins) for each quantized matrix, float32 for
                            the rest (norms, and embeddings kept in float), under Hugging Face names
    tokenizer.json, tokenizer_config.json   as in the float checkpoint

"quantization_config" = {"quant_method": "tinyllm", "scheme": "int4", "format": "q4_0",
"group_size": 32, "symmetric": true, "method": "gptq", "calibration": {...} or null,
"embeddings": "auto", "tensors": {HF name: {"format", "bits", "symmetric", "group_size"}}}.
A K-quant tensor's entry reads {"format": "q4_k", "bits", "symmetric", "super_block": 256,
"sub_block"} and its parts are .codes/.scales/.d(/.dmin) (quantize/kquants.py). A tensor kept in
float16 (a choice of `auto`) is recorded as {"format": "f16"} and stored as a float16 tensor under
its own name. The per-tensor entries are what readers go by (the head may differ from the other
matrices; `auto` gives each tensor its own type).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from quantize.kquants import KQuantWeight
from quantize.modules import QuantizedTransformer
from quantize.schemes import STORED_PARTS, QuantizedWeight, scheme_from_dict, weight_from_tensors
from tinyllm.checkpoint import (CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE,
                                check_checkpoint_dir, from_hf_names, read_tensors)
from tinyllm.config import ModelConfig
from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_directory
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer

QUANT_KEY = "quantization_config"


def quantization_info(path: str | Path) -> dict | None:
    """The checkpoint's quantization section, or None for a float checkpoint (or no config)."""
    try:
        config = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return config.get(QUANT_KEY) if isinstance(config, dict) else None


F16 = "f16"  # the per-tensor format of a matrix kept in float16


def save_quantized(out: str | Path, config: ModelConfig, tokenizer: Tokenizer, floats: dict[str, torch.Tensor],
                   quantized: dict[str, QuantizedWeight | KQuantWeight], info: dict, force: bool = False,
                   records: dict[str, dict] | None = None) -> None:
    """Write the directory at `out` in one go (temp dir, then rename). Tensors under HF names.
    Float tensors are stored float32, except float16 ones (recorded as f16); `records` adds to a
    tensor's entry (why it got its type)."""
    out = Path(out)
    if out.exists() and not force:
        raise TinyLLMError(f"{out}: already exists; pass --force to overwrite it")
    tensors = {name: t.detach().contiguous() if t.dtype == torch.float16 else t.detach().float().contiguous()
               for name, t in floats.items()}
    entries = {name: {"format": F16} for name, t in tensors.items() if t.dtype == torch.float16}
    for name, qw in quantized.items():
        tensors.update(qw.tensors(name))
        entries[name] = qw.scheme.to_dict()
    for name, extra in (records or {}).items():
        entries[name] = {**entries[name], **extra}
    hf = config.to_hf_dict()
    hf[QUANT_KEY] = {"quant_method": "tinyllm", **info, "tensors": entries}
    with atomic_directory(out, replace=force) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        tokenizer.save(tmp / TOKENIZER_FILE)
        tokenizer.save_hf_config(tmp / TOKENIZER_CONFIG_FILE)


def load_quantized(path: str | Path, device: str | torch.device = "cpu",
                   kernel: str = "auto") -> tuple[QuantizedTransformer, Tokenizer, dict]:
    """A quantized checkpoint as an eval-mode model, its tokenizer and its quantization section."""
    path = check_checkpoint_dir(path)
    info = quantization_info(path)
    if info is None:
        raise TinyLLMError(f"{path}: not a quantized checkpoint (config.json has no {QUANT_KEY})")
    config = ModelConfig.load(path / CONFIG_FILE)
    tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
    tensors = read_tensors(path / WEIGHTS_FILE)
    quantized = stored_blocks(path, config, info, tensors)
    floats = from_hf_names({k: v for k, v in tensors.items() if not k.endswith(STORED_PARTS)})
    if torch.device(device).type != "cpu" and kernel == "auto":
        kernel = "dequant"  # the packed kernels here are the CPU ones
    try:
        model = QuantizedTransformer(config, floats, quantized, kernel)
    except ValueError as e:
        raise TinyLLMError(f"{path}: {e}; the quantized checkpoint is damaged") from None
    return model.to(device).eval(), tokenizer, info


def stored_blocks(path: Path, config: ModelConfig, info: dict,
                  tensors: dict[str, torch.Tensor]) -> dict[str, QuantizedWeight | KQuantWeight]:
    """The stored codes/scales of every quantized tensor, under our module names, as stored
    (tensors recorded as f16 are float tensors, not blocks: they are not among them)."""
    where = str(path / CONFIG_FILE)
    reference = weight_shapes(config)
    quantized = {}
    for name, entry in info.get("tensors", {}).items():
        short = name.removeprefix("model.")
        if short not in reference:
            raise TinyLLMError(f"{where}: quantized tensor {name} is not a tensor of this model")
        if isinstance(entry, dict) and entry.get("format") == F16:
            continue
        quantized[short] = weight_from_tensors(scheme_from_dict(entry, where), name, tensors,
                                               tuple(reference[short]), str(path / WEIGHTS_FILE))
    return quantized


def weight_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """Every weight's shape under our module names, from the config alone (no allocation)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in Transformer(config).state_dict().items()}
