"""Quantizing a float32 checkpoint: which tensors get which scheme, calibration text, and the
whole run from a checkpoint directory to a quantized one.

Which tensors: every attention and feed-forward matrix gets the chosen scheme; norms stay
float32. `--embeddings` decides the token embedding and the output head:
  auto   as llama-quantize does: the output head (the embedding, when tied) keeps more bits —
         llama.cpp gives it Q6_K for 4-bit types; here that is int8 (q8_0), the nearest scheme
         at or above it — and an untied embedding gets the chosen scheme;
  same   the chosen scheme for both;  int8   q8_0 for both;  float   both stay float32.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import torch

from quantize.checkpoint import quantization_info, save_quantized
from quantize.gptq import quantize_gptq
from quantize.rtn import quantize_rtn
from quantize.schemes import QuantizedWeight, Scheme, make_scheme
from tinyllm.checkpoint import check_checkpoint_dir, load_checkpoint, to_hf_names
from tinyllm.config import ModelConfig
from tinyllm.dataset import DataSpec, load_splits, tokenize
from tinyllm.errors import TinyLLMError
from tinyllm.evaluate import read_text
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer

EMBEDDINGS = ("auto", "same", "int8", "float")
METHODS = ("rtn", "gptq")
MATRICES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def plan(config: ModelConfig, scheme: Scheme, embeddings: str = "auto") -> dict[str, Scheme]:
    """Our module name -> scheme, for every tensor to quantize (a tied model lists its embedding)."""
    if embeddings not in EMBEDDINGS:
        raise TinyLLMError(f"--embeddings {embeddings!r}: choose one of {', '.join(EMBEDDINGS)}")
    out = {f"layers.{i}.{m}.weight": scheme for i in range(config.n_layers) for m in MATRICES}
    if embeddings == "float":
        return out
    int8 = make_scheme("int8", group_size=scheme.group_size)
    head = scheme if embeddings == "same" else int8
    embed = int8 if embeddings == "int8" else scheme
    if config.tie_embeddings:
        out["embed_tokens.weight"] = head
    else:
        out["embed_tokens.weight"], out["lm_head.weight"] = embed, head
    return out


def calibration_tokens(tokenizer: Tokenizer, spec: DataSpec | None, calib_data: str | None, n_tokens: int,
                       seq_len: int) -> tuple[torch.Tensor, dict]:
    """[n_seq, seq_len] token ids and a description for config.json.

    Default: the first `n_tokens` of the training split's token stream — the split is cut by
    document, so none of it is validation text."""
    if n_tokens < seq_len:
        raise TinyLLMError(f"--calib-tokens {n_tokens}: need at least one sequence of {seq_len} tokens")
    if calib_data:
        stream = tokenizer.encode(read_text(calib_data), parse_special=False)
        source = {"source": "file", "path": str(calib_data)}
    elif spec is not None:
        train_docs, _ = load_splits(spec)
        stream = tokenize(tokenizer, train_docs)
        source = {"source": "training split", "data": spec.to_dict()}
    else:
        raise TinyLLMError("this checkpoint records no training data to calibrate on; pass --calib-data FILE")
    n_seq = min(n_tokens, len(stream)) // seq_len
    if n_seq == 0:
        raise TinyLLMError(f"the calibration text has {len(stream)} tokens, fewer than one sequence of {seq_len}")
    ids = torch.as_tensor(list(stream[:n_seq * seq_len]), dtype=torch.long).view(n_seq, seq_len)
    return ids, {**source, "tokens": n_seq * seq_len, "sequence_length": seq_len}


def quantize_model(model: Transformer, tensors: dict[str, Scheme], method: str,
                   calib: torch.Tensor | None = None,
                   progress: Callable[[str], None] = lambda _: None) -> dict[str, QuantizedWeight]:
    """The planned tensors of a float model (our names), by RTN or GPTQ (on `calib` token ids)."""
    if method == "gptq":
        return quantize_gptq(copy.deepcopy(model), tensors, calib, progress)
    out = {}
    for name, scheme in tensors.items():
        progress(name)
        out[name] = quantize_rtn(model.get_parameter(name), scheme)
    return out


def quantize_checkpoint(checkpoint: str | Path, out: str | Path, scheme_name: str, asym: bool = False,
                        group_size: int = 32, method: str = "rtn", calib_data: str | None = None,
                        calib_tokens: int = 16384, embeddings: str = "auto", force: bool = False,
                        progress: Callable[[str], None] = lambda _: None) -> dict:
    """Read a float32 checkpoint, quantize it, write `out`; return what was done (for the CLI)."""
    checkpoint, out = check_checkpoint_dir(checkpoint), Path(out)
    existing = quantization_info(checkpoint)
    if existing is not None:
        raise TinyLLMError(f"{checkpoint}: already quantized ({existing.get('scheme')}, {existing.get('method')}); "
                           "quantize the float32 checkpoint it was made from instead")
    if out.exists() and not force:
        raise TinyLLMError(f"{out}: already exists; pass --force to overwrite it")
    if method not in METHODS:
        raise TinyLLMError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    scheme = make_scheme(scheme_name, asym, group_size)
    model, tokenizer = load_checkpoint(checkpoint)
    tensors = plan(model.config, scheme, embeddings)
    for name, s in tensors.items():
        s.check_shape(f"model.{name}", tuple(model.get_parameter(name).shape))
    calib, calibration = None, None
    if method == "gptq":
        data = model.config.extra.get("data")
        calib, calibration = calibration_tokens(tokenizer, DataSpec.from_dict(data) if data else None,
                                                calib_data, calib_tokens, model.config.max_seq_len)
    start = time.perf_counter()
    quantized = quantize_model(model, tensors, method, calib, progress)
    seconds = time.perf_counter() - start
    floats = {k: v for k, v in model.state_dict().items() if k not in quantized}
    info = {"scheme": scheme.name, "format": scheme.ggml_type, "group_size": group_size,
            "symmetric": not asym, "method": method, "calibration": calibration, "embeddings": embeddings}
    save_quantized(out, model.config, tokenizer, to_hf_names(floats, model.config.tie_embeddings),
                   {("model." + k if k != "lm_head.weight" else k): v for k, v in quantized.items()}, info, force)
    return {**info, "seconds": seconds, "tensors": len(quantized), "out": str(out)}
