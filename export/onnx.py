"""`tinyllm-export onnx`: a checkpoint as a model directory onnxruntime and onnxruntime-genai run.

    model.onnx             one graph for prefill and decode: the fused graph onnxruntime-genai's
                           builder writes (onnx_fused.py) or, where its ops' rules fail or when
                           asked, the plain graph (onnx_graph.py); float32, or INT8 / INT4 blocks
                           in MatMulNBits (onnx_quant.py); model.onnx.data beside it when large
    config.json            the checkpoint's Llama config (context, token ids, training-data record)
                           and, in its `tinyllm` section under "onnx", this export's record: graph,
                           quantization, accuracy level, opset, validation errors
    tokenizer.json         the checkpoint's tokenizer, and tokenizer_config.json for transformers
    genai_config.json      onnxruntime-genai's description of the graph (its schema's keys only),
                           so that `onnxruntime_genai.Model(dir)` loads the directory unchanged

A quantized checkpoint (`tinyllm quantize`) is exported with its own blocks in `MatMulNBits`
(see onnx_quant.py), never quantized again; its graph is validated against the PyTorch runtime
of that checkpoint, which computes with the same weights: to float32 rounding at accuracy level
0; at level 4, where the kernel rounds activations to int8, by what that rounding may cost (see
`validate`).

The directory is built in a temporary sibling and renamed into place only after onnxruntime has
run it and its logits matched PyTorch's (prompts from an empty cache and continued over a past):
a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import click
import numpy as np
import onnx
import torch
from tqdm import tqdm

from export.onnx_fused import fused_graph, fused_graph_problem
from export.onnx_graph import (ATTENTION_MASK, INPUT_IDS, LOGITS, PAST_KEY, PAST_VALUE, POSITION_IDS, PRESENT_KEY,
                               PRESENT_VALUE, export_graph, matmul_weights, save_model)
from export.onnx_quant import (BLOCK, NBITS_FORMATS, NBitsBlocks, QuantizedCheckpoint, block_weights, graph_blocks,
                               graph_modules, level4_rounding, read_quantized_checkpoint, write_matmul_nbits)
from quantize.checkpoint import quantization_info
from tinyllm.checkpoint import CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, load_checkpoint, to_hf_names
from tinyllm.cli_support import Command
from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_directory, atomic_write_text
from tinyllm.model import Transformer
from tinyllm.runtime.onnx_runtime import EXPORT_RECORD, GENAI_CONFIG_FILE, MODEL_FILE, OnnxRuntime
from tinyllm.tokenizer import Tokenizer

QUANTS = ("none", "int8", "int4")
GRAPHS = ("fused", "plain")
DEVICES = ("cpu", "cuda")
# MatMulNBits accuracy_level: 4 rounds the activations to int8 per block inside the kernel, so the
# CPU kernels use int8 dot products (AVX2/AVX512-VNNI, NEON dot); 0 keeps them in the activation
# type, computing exactly what the PyTorch quantized runtime does (for 8 bits onnxruntime 1.32 has
# no such kernel: it dequantizes the whole weight on every call, docs/onnx.md). The defaults are
# the builder's: 4 for the CPU, 0 for CUDA (whose kernels compute in float16 whatever the level).
ACCURACY_LEVELS = (0, 4)
DEFAULT_ACCURACY_LEVEL = {"cpu": 4, "cuda": 0}
DEFAULT_OPSET = 17
# 13 is the oldest opset tinyllm's graphs are written and checked at; 20 the newest the TorchScript
# exporter writes. The com.microsoft ops need none.
MIN_OPSET, MAX_OPSET = 13, 20
# An exact graph (float32, or MatMulNBits at accuracy level 0) against PyTorch running the weights
# it holds: max |onnxruntime − PyTorch| / max |PyTorch logit|, float32 rounding only (measured
# 4e-7 to 6e-7 on AVX2 and AVX-512 CPUs). A mis-read block layout or scale gives errors of order 1.
EXACT_TOLERANCE = 1e-4
# A level-4 graph: mean KL divergence from the exact logits at most this multiple of what the
# modelled activation rounding (onnx_quant.level4_rounding) costs, plus a floor of float rounding.
# The kernels compute that rounding on AVX2 and AVX-512 alike (MLAS's quantizer is one formula;
# their integer products are exact on both), so the ratio is 1 up to how float differences of
# 1e-7 flip a rounding somewhere and make the two a different draw of the same noise: measured on
# AVX2 over 256 positions, 0.99-1.05 (int8 and int4 blocks) and 0.77-1.09 (q4_1's, whose error is
# not centred) on the test, demo and small presets. 2 is what a kernel would show whose own
# rounding error were as large again, independent of the modelled one. onnxruntime's dynamic INT8
# (u8×s8 MatMulInteger, whose AVX2 kernel saturates pairs of products in int16) came out at 15x
# (demo) and 580x (test preset) what per-block rounding costs; a mis-read layout costs more.
LEVEL4_KLD_FACTOR = 2.0
LEVEL4_KLD_FLOOR = 1e-8
# An exact graph computing in float16 (the CUDA variant): float16 rounding of the activations,
# measured 6.7e-4 on the test model.
FLOAT16_TOLERANCE = 5e-3
# 256 positions: the level-4 ratio below is a ratio of two realizations of rounding noise, whose
# spread over 48 positions was 0.6-1.2 (q4_1 blocks, small preset) and over 256 is 0.77-1.17.
VALIDATION_PROMPTS = 8
VALIDATION_TOKENS = 32


@dataclass(frozen=True)
class Target:
    """What graph to write, for which execution provider, at which accuracy level and opset."""

    graph: str = "fused"
    device: str = "cpu"  # cpu, or cuda: the builder's CUDA variant (float16 activations when quantized)
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL["cpu"]
    opset: int = DEFAULT_OPSET

    def float_type(self, quant: str) -> type:
        """The fused graph's activation type: float16 for a quantized graph on CUDA, as the builder."""
        return np.float16 if self.device == "cuda" and quant != "none" and self.graph == "fused" else np.float32


def check_options(quant: str, target: Target) -> None:
    if quant not in QUANTS:
        raise TinyLLMError(f"--quant {quant}: unknown; choose one of {', '.join(QUANTS)}")
    if target.graph not in GRAPHS:
        raise TinyLLMError(f"--graph {target.graph}: unknown; choose one of {', '.join(GRAPHS)}")
    if target.device not in DEVICES:
        raise TinyLLMError(f"--device {target.device}: choose cpu or cuda (the graph onnxruntime-genai's builder "
                           "makes for the CUDA execution provider)")
    if target.accuracy_level not in ACCURACY_LEVELS:
        raise TinyLLMError(f"--accuracy-level {target.accuracy_level}: choose 4 (int8 activations in the kernel, "
                           "fast on CPU) or 0 (float32 activations, exact to the PyTorch quantized runtime)")
    if target.opset < MIN_OPSET:
        raise TinyLLMError(f"--opset {target.opset}: too old for the graph's ops (RMSNorm, RoPE and attention "
                           f"are exported and checked at opset {MIN_OPSET} or newer); use --opset {DEFAULT_OPSET}")
    if target.opset > MAX_OPSET:
        raise TinyLLMError(f"--opset {target.opset}: newer than PyTorch's TorchScript ONNX exporter writes "
                           f"({MAX_OPSET}); use --opset {DEFAULT_OPSET}")


def choose_graph(target: Target, model: Transformer, log: Callable[[str], None]) -> Target:
    """The target to write: the fused graph unless asked for plain or the model breaks its ops' rules."""
    problem = fused_graph_problem(model.config) if target.graph == "fused" else None
    if problem:
        log(f"fused graph not possible ({problem}): writing the plain graph")
        return replace(target, graph="plain")
    return target


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
                force: bool = False, log: Callable[[str], None] = print, accuracy_level: int | None = None,
                graph: str = "fused", device: str = "cpu") -> dict:
    """Write the ONNX model directory `out` for `checkpoint` (float32, or quantized by `tinyllm
    quantize`); return the validation report. `quant` None: none, or a quantized checkpoint's own;
    `accuracy_level` None: the device's default."""
    checkpoint, out = Path(checkpoint), Path(out)
    info = quantization_info(checkpoint)
    quant = checkpoint_quant(checkpoint, quant, info)
    level = DEFAULT_ACCURACY_LEVEL.get(device, 0) if accuracy_level is None else accuracy_level
    target = Target(graph, device, level, opset)
    check_options(quant, target)
    if out.exists() and not force:
        raise TinyLLMError(f"{out}: already exists; pass --force to overwrite it")
    if out.resolve() == checkpoint.resolve():
        raise TinyLLMError(f"{out}: is the checkpoint itself; write the ONNX model to another directory")
    if info is not None:
        source = read_quantized_checkpoint(checkpoint)
        return export_quantized_checkpoint(source, out, quant, choose_graph(target, source.model, log), force, log)
    model, tokenizer = load_checkpoint(checkpoint)
    target = choose_graph(target, model, log)
    report = {}
    steps = 2 if quant == "none" else 4  # write, [validate float32, write the blocks,] validate
    with atomic_directory(out, replace=force) as tmp, tqdm(total=steps, desc="onnx export", unit="step",
                                                             leave=False, disable=None) as bar:
        path = tmp / MODEL_FILE
        if target.graph == "plain":
            proto = export_graph(model, path, opset)
        else:
            proto = fused_graph(model.config, graph_weights(model), opset, level)
            save_model(proto, path)
        write_support_files(tmp, model, tokenizer, target, export_record(target, quant))
        bar.update()
        if quant != "none":
            report["none"] = validate(tmp, model, "none", log, target)
            bar.update()
            linear = matmul_weights(proto) if target.graph == "plain" else {
                name: w for name, w in graph_weights(model).items() if name.endswith(".weight.T")}
            blocks, left = block_weights(linear, quant)
            if left:
                log(f"{quant}: {len(left)} weights stay float32, their input width is not a multiple of "
                    f"{BLOCK}: {', '.join(left[:4])}{' …' if len(left) > 4 else ''}")
            if target.graph == "plain":
                write_matmul_nbits(proto, blocks, level)
            else:
                proto = fused_graph(model.config, graph_weights(model, blocks), opset, level, target.float_type(quant))
            save_model(proto, path)
            bar.update()
        report[quant] = validate(tmp, model, quant, log, target)
        record_validation(tmp, report)
        bar.update()
    log_written(out, quant, target, log)
    return report


def graph_weights(model: Transformer, blocks: dict[str, NBitsBlocks] | None = None,
                  embedding_is_head: bool = False) -> dict[str, np.ndarray | NBitsBlocks]:
    """`model`'s tensors by the graph's names, for the fused writer: linear weights as MatMul's B
    [K, N] (`….weight.T`) or, where `blocks` names them, those blocks; norms and the embedding
    table as they are. The table is left out, to be read from the head, where the two are one
    tensor: a tied float head, or (`embedding_is_head`) a quantized checkpoint's tied embedding."""
    state = to_hf_names({k: v.detach() for k, v in model.state_dict().items()}, tied=False)
    weights = {}
    for name, tensor in state.items():
        if tensor.dim() == 2 and name != "model.embed_tokens.weight":
            weights[name + ".T"] = np.ascontiguousarray(tensor.numpy().T)
        else:
            weights[name] = tensor.numpy()
    weights |= blocks or {}
    if model.config.tie_embeddings and (embedding_is_head or isinstance(weights["lm_head.weight.T"], np.ndarray)):
        del weights["model.embed_tokens.weight"]
    return weights


def export_quantized_checkpoint(source: QuantizedCheckpoint, out: Path, quant: str, target: Target, force: bool,
                                log: Callable[[str], None]) -> dict:
    """The graph of `source` with the checkpoint's blocks as its MatMul weights."""
    with atomic_directory(out, replace=force) as tmp, tqdm(total=2, desc="onnx export", unit="step",
                                                             leave=False, disable=None) as bar:
        if target.graph == "plain":
            proto = export_graph(source.model, tmp / MODEL_FILE, target.opset)
            missing = sorted(set(source.blocks) - set(matmul_weights(proto)))
            if missing:
                raise TinyLLMError(f"ONNX export: no MatMul in the traced graph holds {', '.join(missing[:4])}; "
                                   "nothing was written")
            write_matmul_nbits(proto, source.blocks, target.accuracy_level)
        else:
            # q4_1's minimums have no GatherBlockQuantized form: its table stays a float Gather.
            head = source.blocks.get("lm_head.weight.T")
            tied = source.model.config.tie_embeddings and head is not None and head.mins is None
            proto = fused_graph(source.model.config, graph_weights(source.model, source.blocks, tied), target.opset,
                                target.accuracy_level, target.float_type(quant))
        save_model(proto, tmp / MODEL_FILE)
        write_support_files(tmp, source.model, source.tokenizer, target, export_record(target, quant, source))
        bar.update()
        report = {quant: validate(tmp, source.model, quant, log, target, reference=source.reference)}
        record_validation(tmp, report)
        bar.update()
    log_written(out, f"{quant}, the checkpoint's {source.info.get('format')} blocks", target, log)
    return report


def log_written(out: Path, quant: str, target: Target, log: Callable[[str], None]) -> None:
    size = sum(f.stat().st_size for f in out.iterdir())
    log(f"wrote {out} ({size / 1e6:.1f} MB, {target.graph} graph for {target.device}, quant {quant}, "
        f"opset {target.opset})")


@torch.inference_mode()
def validate(directory: Path, model: Transformer, quant: str, log: Callable[[str], None], target: Target,
             reference: Transformer | None = None) -> dict:
    """Run the exported graph on random prompts (the first half of each from an empty cache, then
    one token and the rest over the cached past) and compare its logits with PyTorch's.

    The reference computes with the weights the graph holds: PyTorch's float32 model for a float32
    graph; for a graph quantized here, PyTorch running the weights read back from its blocks (so a
    mis-packed block or a wrong scale fails, whatever the quantization costs the model; its
    distance to float32 is reported beside); for a quantized checkpoint, the given `reference`, the
    checkpoint's PyTorch runtime. An exact graph (float32, accuracy level 0) must match it to float
    rounding. A level-4 graph rounds activations to int8 in the kernel, which no single logit bound
    describes across models: it is judged by what it does to the output distribution, its mean KL
    divergence from the exact logits, against the same divergence of the modelled rounding
    (`level4_rounding`): at most LEVEL4_KLD_FACTOR times it. A CUDA graph runs on the CUDA
    provider where there is one, else on the CPU, which has the same ops.
    """
    import onnxruntime as ort

    cuda = target.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    runtime = OnnxRuntime.load(directory, device="cuda" if cuda else "cpu")
    from_checkpoint = reference is not None
    blocks = graph_blocks(onnx.load(str(directory / MODEL_FILE))) if quant != "none" else {}
    # A float model holding the graph's weights: the level-4 model rounds its layers' inputs.
    exact_model = model if from_checkpoint or quant == "none" else with_weights(
        model, {name: b.dequantize() for name, b in blocks.items()})
    reference = reference if from_checkpoint else exact_model
    level4 = quant != "none" and target.accuracy_level == 4
    to_float32 = quant != "none" and not from_checkpoint  # the distance quantizing here cost, reported
    c = model.config
    n = min(VALIDATION_TOKENS, c.max_seq_len)
    generator = torch.Generator().manual_seed(0)
    got, expected, float32, modelled = [], [], [], []
    for _ in range(VALIDATION_PROMPTS):
        ids = torch.randint(0, c.vocab_size, (n,), generator=generator).tolist()
        runtime.reset()
        half = n // 2
        got.append(np.concatenate([runtime.forward(ids[:half]), runtime.forward(ids[half:half + 1]),
                                   runtime.forward(ids[half + 1:])]))
        expected.append(reference(torch.tensor([ids]))[0].numpy())
        if to_float32:
            float32.append(model(torch.tensor([ids]))[0].numpy())
        if level4:
            with level4_rounding(exact_model, blocks) as rounded:
                modelled.append(rounded(torch.tensor([ids]))[0].numpy())
    result = errors(got, expected)
    label = "float32" if quant == "none" else quant
    against = ("the PyTorch runtime of the quantized checkpoint" if from_checkpoint else
               "PyTorch float32" if quant == "none" else f"PyTorch on the {quant} weights read back from the graph")
    if level4:
        result["modelled"] = {**errors(modelled, expected),
                              "vs_graph_max_rel_error": errors(got, modelled)["max_rel_error"]}
        cost = result["modelled"]["kld_mean"]
        result["kld_ratio"] = result["kld_mean"] / cost if cost > 0 else float("nan")
        bound = LEVEL4_KLD_FACTOR * cost + LEVEL4_KLD_FLOOR
        result["kld_bound"] = bound
        passed = result["kld_mean"] <= bound  # also catches NaN
        log(f"validation ({label} graph at accuracy level 4 vs {against}, {result['positions']} positions with and "
            f"without past): mean KLD {result['kld_mean']:.2e} = {result['kld_ratio']:.3f}x the modelled int8 "
            f"rounding of activations (bound {LEVEL4_KLD_FACTOR:g}x + {LEVEL4_KLD_FLOOR:g}), top-1 agreement "
            f"{result['top1_agreement']:.1%}, max rel error {result['max_rel_error']:.2e} (to the model "
            f"{result['modelled']['vs_graph_max_rel_error']:.2e})")
        failure = (f"mean KL divergence from {against} is {result['kld_mean']:.2e}, above {LEVEL4_KLD_FACTOR:g}x what "
                   f"the int8 rounding of activations at accuracy level 4 costs + {LEVEL4_KLD_FLOOR:g} ({bound:.2e})")
    else:
        tolerance = FLOAT16_TOLERANCE if target.float_type(quant) == np.float16 else EXACT_TOLERANCE
        result["tolerance_rel"] = tolerance
        passed = result["max_rel_error"] <= tolerance  # also catches NaN
        log(f"validation ({label} graph vs {against}, {result['positions']} positions with and without past): "
            f"max abs error {result['max_abs_error']:.2e}, max rel error {result['max_rel_error']:.2e} "
            f"(tolerance {tolerance:.2g})")
        failure = f"logits differ from {against} by {result['max_rel_error']:.2e} relative (tolerance {tolerance:.2g})"
    if to_float32:
        result["vs_float32"] = errors(got, float32)
        far = result["vs_float32"]
        log(f"  {label} vs PyTorch float32: max rel error {far['max_rel_error']:.2e}, mean KLD {far['kld_mean']:.2e}, "
            f"top-1 agreement {far['top1_agreement']:.1%}")
    if not passed:
        raise TinyLLMError(f"ONNX export failed validation: the {label} graph's {failure}; nothing was written")
    return result


def errors(got: list[np.ndarray], expected: list[np.ndarray]) -> dict:
    """Max abs error, max error relative to each prompt's largest logit, mean KL(expected || got)
    of the next-token distributions, top-1 agreement."""
    abs_errors = [float(np.abs(g - e).max()) for g, e in zip(got, expected)]
    rel_errors = [a / float(np.abs(e).max()) for a, e in zip(abs_errors, expected)]
    agree = sum(int((g.argmax(-1) == e.argmax(-1)).sum()) for g, e in zip(got, expected))
    positions = sum(len(g) for g in got)

    def log_probs(logits: np.ndarray) -> np.ndarray:
        shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    kld = sum(float((np.exp(p) * (p - q)).sum()) for p, q in
              ((log_probs(e), log_probs(g)) for g, e in zip(got, expected)))
    return {"max_abs_error": max(abs_errors), "max_rel_error": max(rel_errors), "kld_mean": kld / positions,
            "top1_agreement": agree / positions, "positions": positions}


def with_weights(model: Transformer, weights: dict[str, np.ndarray]) -> Transformer:
    """A copy of `model` whose linear layers hold `weights` ([K, N] by graph initializer name; the
    fused graph's packed `qkv_proj` is split back into q, k and v)."""
    c = model.config
    copy = Transformer(c)
    copy.load_state_dict(model.state_dict())
    for name, weight in weights.items():
        modules = graph_modules(name)
        parts = np.split(weight, np.cumsum([c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim]), axis=1) \
            if len(modules) == 3 else [weight]
        for module, columns in zip(modules, parts):
            # A fresh Parameter also unties the head from the embedding, which stays float32.
            copy.get_submodule(module).weight = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(columns.T)))
    return copy.eval()


def export_record(target: Target, quant: str, source: QuantizedCheckpoint | None = None) -> dict:
    """What this export is, for config.json's `tinyllm` section (onnxruntime-genai's config has no
    room for it: it refuses keys outside its schema)."""
    writer = "torch.onnx (TorchScript)" if target.graph == "plain" else "tinyllm export/onnx_fused.py (onnx.helper)"
    record = {"graph": target.graph, "device": target.device, "quant": quant, "opset": target.opset,
              "activations": np.dtype(target.float_type(quant)).name, "writer": writer, "torch": torch.__version__}
    nbits = {"op": "com.microsoft MatMulNBits", "accuracy_level": target.accuracy_level}
    if source is not None:
        q = source.info
        record["quantized_checkpoint"] = {
            **nbits, "scheme": q.get("scheme"), "method": q.get("method"),
            "tensors": {name: entry.get("format") for name, entry in q.get("tensors", {}).items()},
            "blocks": "copied from the checkpoint, not re-quantized",
            "embedding": ("the tied head's blocks, looked up by GatherBlockQuantized (exact: a lookup)"
                          if target.graph == "fused" else "a float32 Gather table holding the dequantized codes")}
    elif quant == "int4":
        record["int4"] = {**nbits, "bits": 4, "block_size": BLOCK, "symmetric": True,
                          "blocks": "round to nearest, onnxruntime's quantizer's rule (GGML q4_0's), float32 scales"}
    elif quant == "int8":
        record["int8"] = {**nbits, "bits": 8, "block_size": BLOCK, "symmetric": True,
                          "blocks": "GGML q8_0, round to nearest (tinyllm quantize int8's), float16 scales"}
    return record


def genai_config(model: Transformer, tokenizer: Tokenizer, target: Target) -> dict:
    """onnxruntime-genai's description of the graph: names, sizes, search defaults, the execution
    provider. The fused graph's GroupQueryAttention writes the present keys/values into the past
    buffer in place, so onnxruntime-genai (and tinyllm's runtime) keep one buffer of the whole
    context per layer."""
    c = model.config
    inputs = {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK}
    providers = [{"cuda": {"enable_cuda_graph": "0"}}] if target.device == "cuda" else []
    if target.graph == "plain":
        inputs["position_ids"] = POSITION_IDS
    return {
        "model": {
            "type": "llama", "vocab_size": c.vocab_size, "context_length": c.max_seq_len,
            "bos_token_id": c.bos_token_id, "eos_token_id": [tokenizer.eot_id, tokenizer.im_end_id],
            "pad_token_id": tokenizer.eot_id,
            "decoder": {
                "filename": MODEL_FILE, "head_size": c.head_dim, "hidden_size": c.d_model,
                "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
                "num_hidden_layers": c.n_layers,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": providers},
                "inputs": {**inputs, "past_key_names": PAST_KEY, "past_value_names": PAST_VALUE},
                "outputs": {"logits": LOGITS, "present_key_names": PRESENT_KEY, "present_value_names": PRESENT_VALUE},
            },
        },
        "search": {"max_length": c.max_seq_len, "do_sample": False,
                   "past_present_share_buffer": target.graph == "fused"},
    }


def write_support_files(directory: Path, model: Transformer, tokenizer: Tokenizer, target: Target,
                        record: dict) -> None:
    model.config.replace(extra={**model.config.extra, EXPORT_RECORD: record}).save(directory / CONFIG_FILE)
    tokenizer.save(directory / TOKENIZER_FILE)
    tokenizer.save_hf_config(directory / TOKENIZER_CONFIG_FILE)
    genai = genai_config(model, tokenizer, target)
    atomic_write_text(directory / GENAI_CONFIG_FILE, json.dumps(genai, indent=2) + "\n")


def record_validation(directory: Path, report: dict) -> None:
    path = directory / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tinyllm"][EXPORT_RECORD]["validation"] = {("float32" if q == "none" else q): r for q, r in report.items()}
    atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


@click.command("onnx", cls=Command)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Model directory to write (model.onnx, config.json, tokenizer.json, genai_config.json).")
@click.option("--quant", default=None,
              help="none (float32, the default), int8 (GGML q8_0 blocks) or int4 (q4_0-rule blocks), both as "
                   "MatMulNBits with blocks of 32. A quantized checkpoint (tinyllm quantize) is written with its "
                   "own blocks; --quant defaults to, and must be, its scheme.")
@click.option("--graph", default="fused", show_default=True,
              help="fused (GroupQueryAttention with rotary inside, packed QKV, SkipSimplifiedLayerNormalization: "
                   "the graph onnxruntime-genai's builder writes) or plain (standard ONNX ops only). A model "
                   "whose head size the fused ops refuse gets the plain graph, with a line saying why.")
@click.option("--accuracy-level", type=int, default=None,
              help="MatMulNBits accuracy_level: 4 (activations rounded to int8 in the kernel: fast int8 dot "
                   "products on CPU; the CPU default) or 0 (activations unrounded: exactly the PyTorch quantized "
                   "runtime; the CUDA default).")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, or cuda: the graph onnxruntime-genai's builder makes for the CUDA execution provider "
                   "(float16 activations when quantized; run it with onnxruntime-gpu).")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset of the graph ({MIN_OPSET}–{MAX_OPSET}).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def onnx_command(checkpoint, out, quant, graph, accuracy_level, device, opset, force):
    """Export CHECKPOINT (float32, or quantized by `tinyllm quantize`) for onnxruntime: one graph
    with a KV cache, checked against PyTorch before it is kept.

    Run it with `tinyllm generate OUT --prompt …`, `tinyllm eval OUT`, or onnxruntime-genai
    (`onnxruntime_genai.Model(OUT)`).
    """
    export_onnx(checkpoint, out, quant and quant.lower(), opset, force, log=lambda m: click.echo(m, err=True),
                accuracy_level=accuracy_level, graph=graph.lower(), device=device.lower())
