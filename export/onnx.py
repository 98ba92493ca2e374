"""`tinyllm-export onnx`: a checkpoint as a self-contained onnxruntime model directory.

    model.onnx             one graph for prefill and decode (see onnx_graph.py), float32, or its
                           INT8 / INT4 form (see onnx_quant.py); model.onnx.data beside it when large
    config.json            the checkpoint's Llama config (context, token ids, training-data record)
    tokenizer.json         the checkpoint's tokenizer, and tokenizer_config.json for transformers
    genai_config.json      onnxruntime-genai-style description of the graph's inputs and outputs,
                           plus a "tinyllm" section: quantization, opset, validation errors

A quantized checkpoint (`tinyllm quantize`) is exported with its own blocks in `MatMulNBits`
(see onnx_quant.py), never quantized again; its graph is validated against the PyTorch runtime
of that checkpoint, which computes with the same weights, to float32 rounding.

The directory is built in a temporary sibling and renamed into place only after onnxruntime has
run it and its logits matched PyTorch's (prompts from an empty cache and continued over a past):
a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import click
import numpy as np
import onnx
import torch
from tqdm import tqdm

from export.onnx_graph import (INPUT_IDS, LOGITS, PAST_KEY, PAST_VALUE, POSITION_IDS, PRESENT_KEY,
                               PRESENT_VALUE, export_graph, matmul_weights, save_model)
from export.onnx_quant import (EXACT_ACCURACY_LEVEL, INT4_ACCURACY_LEVEL, INT4_BLOCK, NBITS_FORMATS,
                               QuantizedCheckpoint, dequantized_weights, quantize_int4, quantize_int8,
                               read_quantized_checkpoint, write_matmul_nbits)
from quantize.checkpoint import quantization_info
from tinyllm.checkpoint import CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, load_checkpoint
from tinyllm.cli_support import Command
from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_directory, atomic_write_text
from tinyllm.model import Transformer
from tinyllm.runtime.onnx_runtime import GENAI_CONFIG_FILE, MODEL_FILE, OnnxRuntime
from tinyllm.tokenizer import Tokenizer

QUANTS = ("none", "int8", "int4")
DEFAULT_OPSET = 17
# 13 is the oldest opset tinyllm's graph is exported and checked at; 20 the newest the TorchScript
# exporter writes. INT8's DynamicQuantizeLinear needs 11, MatMulNBits (com.microsoft) none.
MIN_OPSET, MAX_OPSET = 13, 20
# max |onnxruntime − PyTorch| / max |PyTorch logit| a kept export may show, PyTorch running the
# weights the graph holds (see validate). Float32 differs by rounding only. INT8 and INT4 (at
# accuracy_level 4) also quantize activations inside their kernels: measured up to 2.8e-2 (INT8)
# and 1.6e-2 (INT4) on the test, demo and a random-init base model; the bounds are about 3× that.
# A mis-read block layout or scale gives errors of order 1.
TOLERANCE = {"none": 1e-4, "int8": 0.1, "int4": 0.05}
# A quantized checkpoint's graph against its PyTorch runtime: the same weights and float32
# activations on both sides (MatMulNBits at accuracy level 0), so float32 rounding only.
CHECKPOINT_TOLERANCE = 1e-4
VALIDATION_PROMPTS = 2
VALIDATION_TOKENS = 24


def check_options(quant: str, opset: int) -> None:
    if quant not in QUANTS:
        raise TinyLLMError(f"--quant {quant}: unknown; choose one of {', '.join(QUANTS)}")
    if opset < MIN_OPSET:
        raise TinyLLMError(f"--opset {opset}: too old for the graph's ops (RMSNorm, RoPE and attention "
                           f"are exported and checked at opset {MIN_OPSET} or newer); use --opset {DEFAULT_OPSET}")
    if opset > MAX_OPSET:
        raise TinyLLMError(f"--opset {opset}: newer than PyTorch's TorchScript ONNX exporter writes "
                           f"({MAX_OPSET}); use --opset {DEFAULT_OPSET}")


def checkpoint_quant(checkpoint: Path, quant: str | None, info: dict | None) -> str:
    """The --quant to export with: as asked (default none) for a float checkpoint, the checkpoint's
    own scheme for a quantized one, which cannot be exported as anything else."""
    if info is None:
        return "none" if quant is None else quant
    own = str(info.get("scheme", "")).split("-")[0]  # int4-asym is exported as int4 too
    formats = sorted({str(e.get("format")) for e in info.get("tensors", {}).values()} - set(NBITS_FORMATS))
    if own not in ("int8", "int4") or formats:
        raise TinyLLMError(
            f"{checkpoint}: its {', '.join(formats) or info.get('format')} tensors have no onnxruntime MatMulNBits "
            f"form (it holds {'/'.join(NBITS_FORMATS)} blocks: 4 or 8 bits, one float scale per group), so it "
            f"cannot be exported to ONNX unchanged; export it to GGUF (`tinyllm-export gguf {checkpoint} -o "
            "model.gguf`), or for ONNX quantize the float32 checkpoint with int4 or int8")
    if quant is None or quant == own:
        return own
    if quant not in QUANTS:
        return quant  # unknown: check_options says so
    raise TinyLLMError(
        f"--quant {quant}: {checkpoint} is an {info.get('scheme')} ({info.get('format')}) quantized checkpoint, "
        f"exported only with its own blocks (--quant {own}); for {'float32' if quant == 'none' else quant}, "
        "export the float32 checkpoint it was quantized from"
        + ("" if quant == "none" else f", or run `tinyllm quantize {quant}` on it and export that"))


def export_onnx(checkpoint: str | Path, out: str | Path, quant: str | None = None, opset: int = DEFAULT_OPSET,
                force: bool = False, log: Callable[[str], None] = print,
                int4_accuracy_level: int = INT4_ACCURACY_LEVEL) -> dict:
    """Write the ONNX model directory `out` for `checkpoint` (float32, or quantized by `tinyllm
    quantize`); return the validation report. `quant` None: none, or a quantized checkpoint's own."""
    checkpoint, out = Path(checkpoint), Path(out)
    info = quantization_info(checkpoint)
    quant = checkpoint_quant(checkpoint, quant, info)
    check_options(quant, opset)
    if out.exists() and not force:
        raise TinyLLMError(f"{out}: already exists; pass --force to overwrite it")
    if out.resolve() == checkpoint.resolve():
        raise TinyLLMError(f"{out}: is the checkpoint itself; write the ONNX model to another directory")
    if info is not None:
        return export_quantized_checkpoint(read_quantized_checkpoint(checkpoint), out, quant, opset, force, log)
    model, tokenizer = load_checkpoint(checkpoint)
    report = {}
    steps = 2 if quant == "none" else 4  # trace, [validate float32, quantize,] validate
    with atomic_directory(out, replace=force) as tmp, tqdm(total=steps, desc="onnx export", unit="step",
                                                             leave=False, disable=None) as bar:
        proto = export_graph(model, tmp / MODEL_FILE, opset)
        write_support_files(tmp, model, tokenizer, quant, opset, int4_accuracy_level)
        bar.update()
        if quant != "none":
            report["none"] = validate(tmp, model, "none", log)
            bar.update()
            if quant == "int8":
                quantize_int8(tmp / MODEL_FILE)
            else:
                left = quantize_int4(proto, int4_accuracy_level)
                if left:
                    log(f"int4: {len(left)} weights stay float32, their input width is not a multiple of "
                        f"{INT4_BLOCK}: {', '.join(left[:4])}{' …' if len(left) > 4 else ''}")
                save_model(proto, tmp / MODEL_FILE)
            bar.update()
        report[quant] = validate(tmp, model, quant, log)
        record_validation(tmp, report)
        bar.update()
    log_written(out, quant, opset, log)
    return report


def export_quantized_checkpoint(source: QuantizedCheckpoint, out: Path, quant: str, opset: int, force: bool,
                                log: Callable[[str], None]) -> dict:
    """The graph of `source`'s float twin with the checkpoint's blocks in place of its MatMul weights."""
    with atomic_directory(out, replace=force) as tmp, tqdm(total=2, desc="onnx export", unit="step",
                                                             leave=False, disable=None) as bar:
        proto = export_graph(source.model, tmp / MODEL_FILE, opset)
        missing = sorted(set(source.blocks) - set(matmul_weights(proto)))
        if missing:
            raise TinyLLMError(f"ONNX export: no MatMul in the traced graph holds {', '.join(missing[:4])}; "
                               "nothing was written")
        write_matmul_nbits(proto, source.blocks, EXACT_ACCURACY_LEVEL)
        save_model(proto, tmp / MODEL_FILE)
        write_support_files(tmp, source.model, source.tokenizer, quant, opset, EXACT_ACCURACY_LEVEL, source)
        bar.update()
        report = {quant: validate(tmp, source.model, quant, log, reference=source.reference)}
        record_validation(tmp, report)
        bar.update()
    log_written(out, f"{quant}, the checkpoint's {source.info.get('format')} blocks", opset, log)
    return report


def log_written(out: Path, quant: str, opset: int, log: Callable[[str], None]) -> None:
    size = sum(f.stat().st_size for f in out.iterdir())
    log(f"wrote {out} ({size / 1e6:.1f} MB, quant {quant}, opset {opset})")


@torch.inference_mode()
def validate(directory: Path, model: Transformer, quant: str, log: Callable[[str], None],
             reference: Transformer | None = None) -> dict:
    """Run the exported graph on random prompts (the first half of each from an empty cache, then
    one token and the rest over the cached past) and compare its logits with PyTorch's.

    A float32 graph is held to PyTorch's float32 model. A quantized graph is held to PyTorch
    running the weights read back from the graph (so a mis-packed block or a wrong scale fails,
    whatever the quantization costs the model), and its distance to float32 is reported beside.
    A quantized checkpoint's graph is held to the given `reference`, the checkpoint's PyTorch
    model, as tightly as float32 (no float32 model to report a distance to).
    """
    runtime = OnnxRuntime.load(directory)
    from_checkpoint = reference is not None
    if not from_checkpoint:
        reference = model if quant == "none" else with_weights(model, dequantized_weights(
            onnx.load(str(directory / MODEL_FILE))))
    tolerance = CHECKPOINT_TOLERANCE if from_checkpoint else TOLERANCE[quant]
    c = model.config
    n = min(VALIDATION_TOKENS, c.max_seq_len)
    generator = torch.Generator().manual_seed(0)
    got, expected, float32 = [], [], []
    for _ in range(VALIDATION_PROMPTS):
        ids = torch.randint(0, c.vocab_size, (n,), generator=generator).tolist()
        runtime.reset()
        half = n // 2
        got.append(np.concatenate([runtime.forward(ids[:half]), runtime.forward(ids[half:half + 1]),
                                   runtime.forward(ids[half + 1:])]))
        expected.append(reference(torch.tensor([ids]))[0].numpy())
        float32.append(model(torch.tensor([ids]))[0].numpy())
    result = {**errors(got, expected), "tolerance_rel": tolerance}
    label = "float32" if quant == "none" else quant
    against = ("the PyTorch runtime of the quantized checkpoint" if from_checkpoint else
               "PyTorch float32" if quant == "none" else f"PyTorch on the {quant} weights read back from the graph")
    log(f"validation ({label} graph vs {against}, {result['positions']} positions with and without past): "
        f"max abs error {result['max_abs_error']:.2e}, max rel error {result['max_rel_error']:.2e} "
        f"(tolerance {tolerance:.2g})")
    if quant != "none" and not from_checkpoint:
        result["vs_float32"] = errors(got, float32)
        log(f"  {label} vs PyTorch float32: max abs error {result['vs_float32']['max_abs_error']:.2e}, "
            f"max rel error {result['vs_float32']['max_rel_error']:.2e}, "
            f"top-1 agreement {result['vs_float32']['top1_agreement']:.1%}")
    if not result["max_rel_error"] <= tolerance:  # also catches NaN
        raise TinyLLMError(f"ONNX export failed validation: the {label} graph's logits differ from {against} by "
                           f"{result['max_rel_error']:.2e} relative (tolerance {tolerance:.2g}); "
                           "nothing was written")
    return result


def errors(got: list[np.ndarray], expected: list[np.ndarray]) -> dict:
    """Max abs error, max error relative to each prompt's largest logit, top-1 agreement."""
    abs_errors = [float(np.abs(g - e).max()) for g, e in zip(got, expected)]
    rel_errors = [a / float(np.abs(e).max()) for a, e in zip(abs_errors, expected)]
    agree = sum(int((g.argmax(-1) == e.argmax(-1)).sum()) for g, e in zip(got, expected))
    positions = sum(len(g) for g in got)
    return {"max_abs_error": max(abs_errors), "max_rel_error": max(rel_errors), "top1_agreement": agree / positions,
            "positions": positions}


def with_weights(model: Transformer, weights: dict[str, np.ndarray]) -> Transformer:
    """A copy of `model` whose linear layers hold `weights` ([K, N] by graph initializer name)."""
    copy = Transformer(model.config)
    copy.load_state_dict(model.state_dict())
    for name, weight in weights.items():
        module = copy.get_submodule(name.removesuffix(".weight.T").removeprefix("model."))
        # A fresh Parameter also unties the head from the embedding, which stays float32.
        module.weight = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(weight.T)))
    return copy.eval()


def genai_config(model: Transformer, tokenizer: Tokenizer, quant: str, opset: int, accuracy_level: int,
                 source: QuantizedCheckpoint | None = None) -> dict:
    """onnxruntime-genai's layout for the graph's names and sizes, and tinyllm's own record."""
    c = model.config
    info = {"quant": quant, "opset": opset, "exporter": "torch.onnx (TorchScript)", "torch": torch.__version__}
    if source is not None:
        q = source.info
        info["quantized_checkpoint"] = {
            "op": "com.microsoft MatMulNBits", "scheme": q.get("scheme"), "method": q.get("method"),
            "tensors": {name: entry.get("format") for name, entry in q.get("tensors", {}).items()},
            "accuracy_level": accuracy_level, "blocks": "copied from the checkpoint, not re-quantized",
            "embedding": "float32 Gather table holding the dequantized codes (exact: a lookup)"}
    elif quant == "int4":
        info["int4"] = {"op": "com.microsoft MatMulNBits", "bits": 4, "block_size": INT4_BLOCK, "symmetric": True,
                        "accuracy_level": accuracy_level}
    elif quant == "int8":
        info["int8"] = {"method": "onnxruntime quantize_dynamic", "weights": "int8 per channel",
                        "activations": "uint8, per tensor at run time", "ops": "DynamicQuantizeLinear, MatMulInteger",
                        "provider": "CPUExecutionProvider"}
    return {
        "model": {
            "type": "llama", "vocab_size": c.vocab_size, "context_length": c.max_seq_len,
            "bos_token_id": c.bos_token_id, "eos_token_id": [tokenizer.eot_id, tokenizer.im_end_id],
            "pad_token_id": tokenizer.eot_id,
            "decoder": {
                "filename": MODEL_FILE, "head_size": c.head_dim, "hidden_size": c.d_model,
                "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
                "num_hidden_layers": c.n_layers, "session_options": {"provider_options": []},
                "inputs": {"input_ids": INPUT_IDS, "position_ids": POSITION_IDS,
                           "past_key_names": PAST_KEY, "past_value_names": PAST_VALUE},
                "outputs": {"logits": LOGITS, "present_key_names": PRESENT_KEY,
                            "present_value_names": PRESENT_VALUE},
            },
        },
        "search": {"max_length": c.max_seq_len, "do_sample": False},
        "tinyllm": info,
    }


def write_support_files(directory: Path, model: Transformer, tokenizer: Tokenizer, quant: str, opset: int,
                        accuracy_level: int, source: QuantizedCheckpoint | None = None) -> None:
    model.config.save(directory / CONFIG_FILE)
    tokenizer.save(directory / TOKENIZER_FILE)
    tokenizer.save_hf_config(directory / TOKENIZER_CONFIG_FILE)
    genai = genai_config(model, tokenizer, quant, opset, accuracy_level, source)
    atomic_write_text(directory / GENAI_CONFIG_FILE, json.dumps(genai, indent=2) + "\n")


def record_validation(directory: Path, report: dict) -> None:
    path = directory / GENAI_CONFIG_FILE
    genai = json.loads(path.read_text(encoding="utf-8"))
    genai["tinyllm"]["validation"] = {("float32" if q == "none" else q): r for q, r in report.items()}
    atomic_write_text(path, json.dumps(genai, indent=2) + "\n")


@click.command("onnx", cls=Command)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Model directory to write (model.onnx, config.json, tokenizer.json, genai_config.json).")
@click.option("--quant", default=None,
              help="none (float32, the default), int8 (onnxruntime dynamic INT8, CPU) or int4 (MatMulNBits, "
                   "block 32). A quantized checkpoint (tinyllm quantize) is written with its own blocks as "
                   "MatMulNBits; --quant defaults to, and must be, its scheme.")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset of the graph ({MIN_OPSET}–{MAX_OPSET}).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def onnx_command(checkpoint, out, quant, opset, force):
    """Export CHECKPOINT (float32, or quantized by `tinyllm quantize`) for onnxruntime: one graph
    with a KV cache, checked against PyTorch before it is kept.

    Run it with `tinyllm generate OUT --prompt …` or `tinyllm eval OUT`.
    """
    export_onnx(checkpoint, out, quant and quant.lower(), opset, force, log=lambda m: click.echo(m, err=True))
