"""`tinyllm-export gguf`: a checkpoint as one GGUF file for llama.cpp (architecture `llama`).

The file carries every hyperparameter llama.cpp's `llama` architecture reads, the tokenizer as
llama.cpp's `gpt2` BPE (tokens, types, merges, pre-tokenizer `gpt-2`, no BOS added) with the
ChatML template, and the weights under GGUF tensor names. Hugging Face stores q/k projection rows
in rotate-half order; llama.cpp rotates interleaved pairs, so those rows are permuted exactly as
llama.cpp's convert_hf_to_gguf.py does. The permutation moves whole rows and GGML blocks run
along rows, so it applies to float rows and to ready-made quantized blocks alike.

Two sources, one writer. From a float32 checkpoint, `float_tensors` + `plan_types` +
`gguf_quants.encode` make the blocks. From a quantized checkpoint (`tinyllm-quantize`),
`quantized_tensors` copies its codes and scales (and minimums; for the K-quants the sub-block
scales and the super-blocks' d/dmin) into GGML blocks verbatim (`blocks()` of
quantize.schemes.QuantizedWeight / quantize.kquants.KQuantWeight): the checkpoint's block layouts
are GGML's, so nothing is quantized twice and llama.cpp computes with exactly the weights the
PyTorch quantized runtime does; tensors the checkpoint kept in float are written as F32 (norms,
an embedding kept by `--embeddings float`) or F16 (matrices `auto` kept in float16). `write_gguf`
writes either list of `GGUFTensor`s, reads the file back with `gguf.GGUFReader`, checks it, and
only then moves it into place; `file_bytes` is the size it would write, without writing it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np
import torch
from gguf import (GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFReader,
                  GGUFWriter, LlamaFileType, TokenType)
from tqdm import tqdm

from export.gguf_quants import block_size, encode, fits
from quantize.checkpoint import quantization_info, stored_blocks, weight_shapes
from quantize.kquants import KQuantWeight
from quantize.schemes import STORED_PARTS, QuantizedWeight
from tinyllm import __version__
from tinyllm.chat import CHAT_TEMPLATE, SPECIAL_TOKENS
from tinyllm.checkpoint import (CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, check_checkpoint_dir, from_hf_names,
                                load_checkpoint, read_tensors)
from tinyllm.cli_support import Command
from tinyllm.config import ModelConfig
from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_write
from tinyllm.tokenizer import Tokenizer

Q = GGMLQuantizationType

# --type name -> (the GGML type of the weight matrices, the file type recorded in general.file_type).
# q3_k/q4_k/q5_k are "all matrices in that type"; llama.cpp has no pure file type for them, so the
# closest one (_S) is recorded. q4_k_m is llama.cpp's mixture (see `matrix_type`).
TYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (Q.F32, LlamaFileType.ALL_F32),
    "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (Q.Q4_1, LlamaFileType.MOSTLY_Q4_1),
    "q5_0": (Q.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    "q5_1": (Q.Q5_1, LlamaFileType.MOSTLY_Q5_1),
    "q2_k": (Q.Q2_K, LlamaFileType.MOSTLY_Q2_K),
    "q3_k": (Q.Q3_K, LlamaFileType.MOSTLY_Q3_K_S),
    "q4_k": (Q.Q4_K, LlamaFileType.MOSTLY_Q4_K_S),
    "q5_k": (Q.Q5_K, LlamaFileType.MOSTLY_Q5_K_S),
    "q6_k": (Q.Q6_K, LlamaFileType.MOSTLY_Q6_K),
    "q4_k_m": (Q.Q4_K, LlamaFileType.MOSTLY_Q4_K_M),
}
# What a type falls back to where a row does not split into its blocks (llama.cpp's own choices
# in llama-quantize); F16 is the last resort for rows that are not even a multiple of 32.
FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


@dataclass
class GGUFTensor:
    """One tensor as it goes into the file: its GGUF name, GGML type, and data — a float array
    for F32/F16, else uint8 blocks [rows, bytes per row] (from our encoders or copied from a
    quantized checkpoint)."""

    name: str
    qtype: GGMLQuantizationType
    data: np.ndarray


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp's interleaved pairs (convert_hf_to_gguf's permute)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def gguf_names(config: ModelConfig) -> dict[str, tuple[str, int | None]]:
    """Our module name -> (GGUF name, the head count to permute its rows by, or None), in file order."""
    out: dict[str, tuple[str, int | None]] = {"embed_tokens.weight": ("token_embd.weight", None)}
    for i in range(config.n_layers):
        p, b = f"layers.{i}.", f"blk.{i}."
        out.update({
            p + "input_layernorm.weight": (b + "attn_norm.weight", None),
            p + "self_attn.q_proj.weight": (b + "attn_q.weight", config.n_heads),
            p + "self_attn.k_proj.weight": (b + "attn_k.weight", config.n_kv_heads),
            p + "self_attn.v_proj.weight": (b + "attn_v.weight", None),
            p + "self_attn.o_proj.weight": (b + "attn_output.weight", None),
            p + "post_attention_layernorm.weight": (b + "ffn_norm.weight", None),
            p + "mlp.gate_proj.weight": (b + "ffn_gate.weight", None),
            p + "mlp.up_proj.weight": (b + "ffn_up.weight", None),
            p + "mlp.down_proj.weight": (b + "ffn_down.weight", None),
        })
    out["norm.weight"] = ("output_norm.weight", None)
    if not config.tie_embeddings:
        out["lm_head.weight"] = ("output.weight", None)
    return out


def _in_llama_cpp_order(array: np.ndarray, heads: int | None) -> np.ndarray:
    return array if heads is None else permute_rope_rows(array, heads)


def float_tensors(config: ModelConfig, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array from our module names, q/k rows permuted for llama.cpp."""
    return {name: _in_llama_cpp_order(state[ours], heads) for ours, (name, heads) in gguf_names(config).items()}


def quantized_tensors(config: ModelConfig, floats: dict[str, np.ndarray],
                      quantized: dict[str, QuantizedWeight | KQuantWeight]) -> list[GGUFTensor]:
    """A quantized checkpoint's tensors (our module names) as they go into the file: its blocks
    copied as GGML blocks (whole rows, so the q/k permutation moves them unchanged), everything
    it kept in float as F32, or F16 where it stored float16."""
    out = []
    for ours, (name, heads) in gguf_names(config).items():
        if ours in quantized:
            qw = quantized[ours]
            data, qtype = qw.blocks(), TYPES[qw.scheme.ggml_type][0]
        else:
            data = floats[ours]
            qtype = Q.F16 if data.dtype == np.float16 else Q.F32
        out.append(GGUFTensor(name, qtype, _in_llama_cpp_order(data, heads)))
    return out


def _more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def matrix_type(name: str, type_name: str, n_layers: int, has_output: bool) -> GGMLQuantizationType:
    """The type one weight matrix gets under `--type type_name` (before any fallback)."""
    base = TYPES[type_name][0]
    if type_name != "q4_k_m":
        return base
    # llama.cpp's Q4_K_M: the output projection (the embedding when tied) in Q6_K, and attn_v /
    # ffn_down in Q6_K on the layers use_more_bits picks.
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        return Q.Q6_K
    if name.endswith(("attn_v.weight", "ffn_down.weight")) and _more_bits(int(name.split(".")[1]), n_layers):
        return Q.Q6_K
    return base


def plan_types(tensors: dict[str, np.ndarray], type_name: str, n_layers: int,
               allow_fallback: bool) -> tuple[dict[str, GGMLQuantizationType], list[str]]:
    """Each tensor's GGML type and a line per fallback taken; misfits without `allow_fallback`
    are an error that names them."""
    has_output = "output.weight" in tensors
    types, fallbacks, misfits = {}, [], []
    for name, array in tensors.items():
        if array.ndim == 1:
            types[name] = Q.F32  # norms stay float32, as llama.cpp keeps them
            continue
        wanted = matrix_type(name, type_name, n_layers, has_output)
        chosen = wanted
        if not fits(array.shape[-1], chosen):
            chosen = FALLBACK.get(chosen, Q.F16)
            if not fits(array.shape[-1], chosen):
                chosen = Q.F16
            misfits.append(name)
            fallbacks.append(f"{name}: rows of {array.shape[-1]} do not split into {wanted.name} blocks "
                             f"of {block_size(wanted)}; wrote {chosen.name}")
        types[name] = chosen
    if misfits and not allow_fallback:
        shown = ", ".join(f"{n} (rows of {tensors[n].shape[-1]})" for n in misfits[:6])
        more = f" and {len(misfits) - 6} more" if len(misfits) > 6 else ""
        raise TinyLLMError(f"--type {type_name}: {len(misfits)} tensors do not split into "
                           f"{TYPES[type_name][0].name} blocks: {shown}{more}; pass --allow-fallback "
                           "to write those in the nearest type that fits, or pick a model whose widths are "
                           "multiples of 256")
    return types, fallbacks


def add_tokenizer(writer: GGUFWriter, tokenizer: Tokenizer) -> None:
    """The tokenizer as llama.cpp's `gpt2` BPE with pre-tokenizer `gpt-2`, and the ChatML template.

    <|endoftext|> is BOS and EOS (never added: add_bos_token false); <|im_end|> is EOT, so chat
    generation stops at the end of the assistant turn. llama.cpp ends generation at either.
    """
    tokens = tokenizer.tokens()
    special = set(SPECIAL_TOKENS)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL for t in tokens])
    writer.add_token_merges(tokenizer.merges())
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_eot_token_id(tokenizer.im_end_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def add_hyperparameters(writer: GGUFWriter, config: ModelConfig) -> None:
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _check_written(path: Path, tensors: list[GGUFTensor], n_tokens: int) -> None:
    """Read the file back and compare every tensor's type, shape and bytes with what was meant."""
    try:
        reader = GGUFReader(path)
    except Exception as e:  # GGUFReader raises plain ValueError/struct errors on a bad file
        raise TinyLLMError(f"the GGUF just written does not read back ({e}); nothing was kept") from None
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != "llama":
        raise TinyLLMError("the GGUF just written lacks general.architecture=llama; nothing was kept")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != n_tokens:
        raise TinyLLMError("the GGUF just written has a wrong token list; nothing was kept")
    found = {t.name: t for t in reader.tensors}
    if sorted(found) != sorted(t.name for t in tensors):
        raise TinyLLMError("the GGUF just written has a different tensor set; nothing was kept")
    for tensor in tensors:
        back = found[tensor.name]
        if back.tensor_type != tensor.qtype or back.data.tobytes() != np.ascontiguousarray(tensor.data).tobytes():
            raise TinyLLMError(f"tensor {tensor.name} reads back differently from what was written; "
                               "nothing was kept")


def _writer(path: Path, config: ModelConfig, tokenizer: Tokenizer, file_type: LlamaFileType, name: str,
            extra: dict[str, str | list[str]]) -> GGUFWriter:
    """A GGUFWriter holding every key-value the file carries (tensors not yet added)."""
    writer = GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    add_hyperparameters(writer, config)
    add_tokenizer(writer, tokenizer)
    for key, value in extra.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_string(key, value)
    return writer


def write_gguf(out: Path, config: ModelConfig, tokenizer: Tokenizer, tensors: list[GGUFTensor],
               file_type: LlamaFileType, name: str, extra: dict[str, str | list[str]] | None = None) -> None:
    """Write a complete GGUF atomically; it is read back and checked before it replaces `out`."""

    def write(tmp: Path) -> None:
        writer = _writer(tmp, config, tokenizer, file_type, name, extra or {})
        for tensor in tensors:
            quantized = tensor.data.dtype == np.uint8
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.qtype if quantized else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        _check_written(tmp, tensors, tokenizer.vocab_size)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # an ordinary file's mode, not the temporary file's 0600

    try:
        atomic_write(out, write)
    except OSError as e:
        raise TinyLLMError(f"{out}: cannot write ({e.strerror or e})") from None


def tensor_bytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """What one tensor of this shape and type takes in the file, padding to the next tensor included."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    return GGUFWriter.ggml_pad(int(np.prod(shape)) // block * type_size, GGUF_DEFAULT_ALIGNMENT)


def metadata_bytes(config: ModelConfig, tokenizer: Tokenizer, name: str,
                   extra: dict[str, str | list[str]]) -> int:
    """The bytes before the first tensor's data (header, key-values, tensor table, padding) of the
    file `write_gguf` writes for this model: the same whatever the tensors' types."""
    shapes = weight_shapes(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "meta.gguf"
        writer = _writer(path, config, tokenizer, LlamaFileType.ALL_F32, name, extra)
        for ours, (gguf_name, _) in gguf_names(config).items():
            writer.add_tensor_info(gguf_name, tuple(shapes[ours]), np.dtype(np.float32), 0, raw_dtype=Q.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        return GGUFWriter.ggml_pad(path.stat().st_size, GGUF_DEFAULT_ALIGNMENT)


def export_metadata(config: ModelConfig, type_name: str, info: dict | None,
                    fallbacks: list[str] | None = None) -> dict[str, str | list[str]]:
    """tinyllm's own keys in the file: version, type, model extras and, from a quantized
    checkpoint, where its blocks came from (scheme, method, group size, calibration)."""
    extra: dict[str, str | list[str]] = {
        "tinyllm.version": __version__,
        "tinyllm.type": type_name,
        "tinyllm.extra": json.dumps(config.extra, sort_keys=True),
    }
    if info is not None:
        extra["tinyllm.quantization"] = json.dumps({k: v for k, v in info.items() if k != "tensors"}, sort_keys=True)
    if fallbacks:
        extra["tinyllm.fallback"] = fallbacks
    return extra


# How to get a GGML type that a quantized checkpoint does not hold: its tinyllm-quantize arguments.
QUANTIZE_ARGS = {"q8_0": "int8", "q4_0": "int4", "q4_1": "int4 --asym",
                 **{k: k for k in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")}}
MIXED = "mixed"  # the format of an `auto` checkpoint: every tensor has its own type


def read_quantized(checkpoint: Path, info: dict) -> tuple[ModelConfig, Tokenizer, dict[str, np.ndarray],
                                                          dict[str, QuantizedWeight | KQuantWeight]]:
    """A quantized checkpoint's config, tokenizer, float tensors (float16 ones kept so) and stored
    blocks (our module names), read as stored: no model is built and no weight is dequantized."""
    checkpoint = check_checkpoint_dir(checkpoint)
    config = ModelConfig.load(checkpoint / CONFIG_FILE)
    stored = read_tensors(checkpoint / WEIGHTS_FILE)
    quantized = stored_blocks(checkpoint, config, info, stored)
    floats = {k: (v if v.dtype == torch.float16 else v.float()).numpy() for k, v in from_hf_names(stored).items()
              if not k.endswith(STORED_PARTS)}
    missing = [ours for ours in gguf_names(config) if ours not in quantized and ours not in floats]
    if missing:
        raise TinyLLMError(f"{checkpoint / WEIGHTS_FILE}: lacks {', '.join(missing[:4])}; the quantized "
                           "checkpoint is damaged")
    return config, Tokenizer.load(checkpoint / TOKENIZER_FILE), floats, quantized


def _quantized_type(checkpoint: Path, info: dict, type_name: str | None) -> str:
    """The --type a quantized checkpoint exports as: its own format; another one is refused with the way to it."""
    own = str(info.get("format", "")).lower()
    if own not in QUANTIZE_ARGS and own != MIXED:
        raise TinyLLMError(f"{checkpoint}: quantization format {own or 'missing'!r} in config.json is not one of "
                           f"{', '.join([*QUANTIZE_ARGS, MIXED])}; the quantized checkpoint is damaged")
    if type_name is not None and type_name != own:
        held = f"{own} ({info.get('scheme')}: a type per tensor)" if own == MIXED else own
        how = (f", or quantize that one with `tinyllm quantize {QUANTIZE_ARGS[type_name]}` and export the result"
               if type_name in QUANTIZE_ARGS else "")
        raise TinyLLMError(f"--type {type_name}: {checkpoint} is a quantized checkpoint of {held} blocks, which "
                           f"export as such only (never quantized twice); for {type_name}, export the float32 "
                           f"checkpoint it was made from with --type {type_name}{how}")
    return own


def file_type(type_name: str, tensors: list[GGUFTensor]) -> LlamaFileType:
    """general.file_type: the --type's, or for a mixed checkpoint that of the type most weights have
    (llama.cpp only reports it)."""
    if type_name in TYPES:
        return TYPES[type_name][1]
    weights: dict[GGMLQuantizationType, int] = {}
    for tensor in tensors:
        if tensor.data.ndim == 2:
            weights[tensor.qtype] = weights.get(tensor.qtype, 0) + tensor.data.shape[0]
    dominant = max(weights, key=weights.get)
    return next(ftype for qtype, ftype in TYPES.values() if qtype == dominant)


def export_gguf(checkpoint: str | Path, out: str | Path, type_name: str | None = None,
                allow_fallback: bool = False, force: bool = False,
                log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Export a checkpoint directory to `out`: a float32 one as `type_name` (default f32), a
    quantized one as its own GGML type(s) (its blocks copied).

    Returns a summary: path, type, bytes, tensors by GGML type, fallbacks taken."""
    checkpoint, out = Path(checkpoint), Path(out)
    type_name = type_name.lower() if type_name else None
    if type_name is not None and type_name not in TYPES:
        raise TinyLLMError(f"--type {type_name}: unknown GGUF type; choose one of: {', '.join(TYPES)}")
    info = quantization_info(checkpoint)
    if info is not None:
        type_name = _quantized_type(checkpoint, info, type_name)
    type_name = type_name or "f32"
    if out.exists() and not force:
        raise TinyLLMError(f"{out}: already exists; pass --force to overwrite it")
    if out.is_dir():
        raise TinyLLMError(f"{out}: is a directory; give a file name such as model.gguf")
    if not out.parent.is_dir():
        raise TinyLLMError(f"{out.parent}: no such directory for the output file")
    fallbacks: list[str] = []
    if info is not None:
        config, tokenizer, floats, quantized = read_quantized(checkpoint, info)
        tensors = quantized_tensors(config, floats, quantized)
    else:
        model, tokenizer = load_checkpoint(checkpoint)
        config = model.config
        state = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
        arrays = float_tensors(config, state)
        types, fallbacks = plan_types(arrays, type_name, config.n_layers, allow_fallback)
        for line in fallbacks:
            log(f"fallback: {line}")
        tensors = [GGUFTensor(name, types[name], encode(array, types[name]))
                   for name, array in tqdm(arrays.items(), desc=f"encoding {type_name}", unit="tensor",
                                           file=sys.stderr, leave=False, disable=not progress)]
    extra = export_metadata(config, type_name, info, fallbacks)
    write_gguf(out, config, tokenizer, tensors, file_type(type_name, tensors), checkpoint.resolve().name, extra)
    counts: dict[str, int] = {}
    for tensor in tensors:
        counts[tensor.qtype.name] = counts.get(tensor.qtype.name, 0) + 1
    return {"path": str(out), "type": type_name, "bytes": os.path.getsize(out), "tensor_types": counts,
            "fallbacks": fallbacks}


@click.command("gguf", cls=Command)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="The .gguf file to write.")
@click.option("--type", "type_name", default=None, metavar="TYPE",
              help=f"Tensor type, one of {', '.join(TYPES)}  [default: f32; for a quantized checkpoint its own "
                   "type(s), the only one it exports as]. q2_k…q6_k need rows that are multiples of 256; "
                   "q4_k_m is llama.cpp's Q4_K/Q6_K mixture.")
@click.option("--allow-fallback", is_flag=True,
              help="Write tensors whose rows do not split into the type's blocks in the nearest type that "
                   "fits (printed, and recorded under tinyllm.fallback) instead of failing.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def gguf_command(checkpoint, out, type_name, allow_fallback, force):
    """Write CHECKPOINT (a float32 or a tinyllm-quantize checkpoint directory) as a GGUF file for llama.cpp.

    A quantized checkpoint's blocks are copied as they are (int8 -> q8_0, int4 -> q4_0,
    int4 --asym -> q4_1, q2_k…q6_k -> themselves, auto -> each tensor's own type; tensors it kept
    in float -> F32, or F16 where it chose float16), never quantized a second time.
    """
    summary = export_gguf(checkpoint, out, type_name, allow_fallback, force, log=click.echo)
    types = ", ".join(f"{n} {t}" for t, n in sorted(summary["tensor_types"].items()))
    click.echo(f"wrote {summary['path']} ({summary['type']}, {summary['bytes']:,} bytes; tensors: {types})")
