"""Quantizing a float32 checkpoint: which tensors get which scheme, calibration text, and the
whole run from a checkpoint directory to a quantized one.

Which tensors: every attention and feed-forward matrix gets the chosen scheme; norms stay
float32. `--embeddings` decides the token embedding and the output head:
  auto   as llama-quantize does: the output head (the embedding, when tied) keeps more bits —
         q6_k under a K scheme (q8_0 where its rows do not split into 256), q8_0 under int8/int4
         (so that those export to ONNX's MatMulNBits unchanged) — and an untied embedding gets
         the chosen scheme;
  same   the chosen scheme for both;  int8   q8_0 for both;  float   both stay float32.
`auto` as the scheme (quantize/auto.py) instead picks every tensor's type for a size.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import torch

from gguf import GGMLQuantizationType

from quantize.auto import (SENSITIVITY_TOKENS, SizeModel, check_target, measure, plan_types, records,
                           reuse_sensitivity, schemes_of)
from quantize.checkpoint import F16, quantization_info, save_quantized, weight_shapes
from quantize.gptq import quantize_gptq
from quantize.rtn import quantize_rtn
from quantize.kquants import QK_K, KQuantWeight, KScheme
from quantize.schemes import QuantizedWeight, Scheme, make_scheme
from tinyllm.checkpoint import check_checkpoint_dir, checkpoint_digest, load_checkpoint, to_hf_names
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


def head_scheme(scheme: Scheme | KScheme, width: int) -> Scheme | KScheme:
    """The output head's scheme under --embeddings auto. A K scheme's head gets llama-quantize's
    Q6_K, or q8_0 where its rows of `width` do not split into 256. int8/int4 keep it in q8_0: those
    checkpoints export to ONNX unchanged, and MatMulNBits / GatherBlockQuantized hold no Q6_K."""
    if isinstance(scheme, Scheme):
        return make_scheme("int8", group_size=scheme.group_size)
    if width % QK_K:
        return make_scheme("int8")
    return KScheme("q6_k")


def plan(config: ModelConfig, scheme: Scheme | KScheme, embeddings: str = "auto") -> dict[str, Scheme | KScheme]:
    """Our module name -> scheme, for every tensor to quantize (a tied model lists its embedding)."""
    if embeddings not in EMBEDDINGS:
        raise TinyLLMError(f"--embeddings {embeddings!r}: choose one of {', '.join(EMBEDDINGS)}")
    out = {f"layers.{i}.{m}.weight": scheme for i in range(config.n_layers) for m in MATRICES}
    if embeddings == "float":
        return out
    int8 = make_scheme("int8", group_size=scheme.group_size if isinstance(scheme, Scheme) else 32)
    head = {"same": scheme, "int8": int8}.get(embeddings) or head_scheme(scheme, config.d_model)
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


def quantize_model(model: Transformer, tensors: dict[str, Scheme | KScheme], method: str,
                   calib: torch.Tensor | None = None,
                   progress: Callable[[str], None] = lambda _: None) -> dict[str, QuantizedWeight | KQuantWeight]:
    """The planned tensors of a float model (our names), by RTN or GPTQ (on `calib` token ids)."""
    if method == "gptq":
        return quantize_gptq(copy.deepcopy(model), tensors, calib, progress)
    out = {}
    for name, scheme in tensors.items():
        progress(name)
        out[name] = quantize_rtn(model.get_parameter(name), scheme)
    return out


def _size_model(config: ModelConfig, tokenizer: Tokenizer, out: Path, info: dict) -> SizeModel:
    """The exported GGUF's size as `auto` plans it, counted by the GGUF writer itself."""
    from export.gguf import MIXED, export_metadata, metadata_bytes, tensor_bytes  # export sits on top of quantize

    shapes = weight_shapes(config)
    extra = export_metadata(config, MIXED, info)
    fixed = metadata_bytes(config, tokenizer, out.resolve().name, extra) + sum(
        tensor_bytes(tuple(shape), GGMLQuantizationType.F32) for shape in shapes.values() if len(shape) == 1)
    names = [n for n in shapes if len(shapes[n]) == 2 and not (config.tie_embeddings and n == "lm_head.weight")]
    return SizeModel(fixed, {n: tuple(shapes[n]) for n in names}, config.num_params(), tensor_bytes)


def _check_options(scheme_name: str, asym: bool, group_size: int, embeddings: str, target_bpw: float | None) -> None:
    if scheme_name == "auto":
        if target_bpw is None:
            raise TinyLLMError("auto needs --target-bpw X: the size to reach, in bits per weight of the exported "
                               "GGUF file (e.g. --target-bpw 5.0)")
        if asym or group_size != 32 or embeddings != "auto":
            raise TinyLLMError("--asym, --group-size and --embeddings do not apply to auto, which picks every "
                               "tensor's type itself (the embedding and head included)")
    elif target_bpw is not None:
        raise TinyLLMError(f"--target-bpw applies to auto only; {scheme_name} has a fixed size "
                           f"(use `tinyllm-quantize auto … --target-bpw {target_bpw:g}`)")


def quantize_checkpoint(checkpoint: str | Path, out: str | Path, scheme_name: str, asym: bool = False,
                        group_size: int = 32, method: str | None = None, calib_data: str | None = None,
                        calib_tokens: int = 16384, embeddings: str = "auto", force: bool = False,
                        progress: Callable[[str], None] = lambda _: None, target_bpw: float | None = None,
                        sensitivity_from: str | Path | None = None) -> dict:
    """Read a float32 checkpoint, quantize it, write `out`; return what was done (for the CLI).
    `scheme_name` auto picks each tensor's type for `target_bpw` (quantize/auto.py), from the
    divergences measured now or, `sensitivity_from`, recorded in an earlier auto checkpoint."""
    checkpoint, out = check_checkpoint_dir(checkpoint), Path(out)
    existing = quantization_info(checkpoint)
    if existing is not None:
        raise TinyLLMError(f"{checkpoint}: already quantized ({existing.get('scheme')}, {existing.get('method')}); "
                           "quantize the float32 checkpoint it was made from instead")
    if out.exists() and not force:
        raise TinyLLMError(f"{out}: already exists; pass --force to overwrite it")
    auto = scheme_name == "auto"
    method = method or ("gptq" if auto else "rtn")
    if method not in METHODS:
        raise TinyLLMError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    _check_options(scheme_name, asym, group_size, embeddings, target_bpw)
    if sensitivity_from is not None and not auto:
        raise TinyLLMError("--sensitivity-from applies to auto only")
    scheme = None if auto else make_scheme(scheme_name, asym, group_size)
    model, tokenizer = load_checkpoint(checkpoint)
    if not auto:
        tensors = plan(model.config, scheme, embeddings)
        for name, s in tensors.items():
            s.check_shape(f"model.{name}", tuple(model.get_parameter(name).shape))
    calib, calibration = None, None
    if method == "gptq" or auto:
        data = model.config.extra.get("data")
        calib, calibration = calibration_tokens(tokenizer, DataSpec.from_dict(data) if data else None,
                                                calib_data, calib_tokens, model.config.max_seq_len)
    if auto:
        info = {"scheme": "auto", "format": "mixed", "method": method, "calibration": calibration,
                "embeddings": "auto", "target_bpw": target_bpw, "bpw": round(target_bpw, 4),
                "sensitivity": {"tokens": min(calib.numel(), max(SENSITIVITY_TOKENS, calib.shape[1])),
                                "measure": "mean KL divergence from the float32 model, one tensor quantized",
                                "checkpoint_sha256": checkpoint_digest(checkpoint)}}
        size = _size_model(model.config, tokenizer, out, info)
        check_target(size, target_bpw)
    start = time.perf_counter()
    if auto:
        sensitivity = (measure(model, calib, method, progress) if sensitivity_from is None else
                       reuse_sensitivity(sensitivity_from, info["sensitivity"]["checkpoint_sha256"], method,
                                         calibration))
        types = plan_types(size, sensitivity, target_bpw)
        info["bpw"] = round(size.bpw(types), 4)
        tensors = schemes_of(types)
        for name, fmt in types.items():
            if fmt == F16:  # stored float16: later layers calibrate on what will be kept
                model.get_parameter(name).data.copy_(model.get_parameter(name).data.half().float())
    quantized = quantize_model(model, tensors, method, calib, progress)
    seconds = time.perf_counter() - start
    floats = {k: v for k, v in model.state_dict().items() if k not in quantized}
    if auto:
        floats |= {name: floats[name].half() for name, fmt in types.items() if fmt == F16}
    else:
        kquant = isinstance(scheme, KScheme)
        info = {"scheme": scheme.name, "format": scheme.ggml_type, "group_size": QK_K if kquant else group_size,
                "symmetric": not scheme.layout.has_min if kquant else not asym, "method": method,
                "calibration": calibration, "embeddings": embeddings}
    hf = to_hf_names(floats, model.config.tie_embeddings)
    extra = None if not auto else {hf_name(k): v for k, v in records(types, sensitivity).items()}
    save_quantized(out, model.config, tokenizer, hf, {hf_name(k): v for k, v in quantized.items()}, info, force,
                   extra)
    report = {**info, "seconds": seconds, "tensors": len(quantized) + (len(types) - len(tensors) if auto else 0),
              "out": str(out)}
    if auto:
        counts: dict[str, int] = {}
        for fmt in types.values():
            counts[fmt] = counts.get(fmt, 0) + 1
        report["type_counts"] = ", ".join(f"{n} {f}" for f, n in sorted(counts.items()))
    return report


def hf_name(ours: str) -> str:
    """Our module name as the checkpoint's safetensors name it."""
    return "model." + ours if ours != "lm_head.weight" else ours
