"""`tinyllm-export onnx`: a checkpoint as a model directory onnxruntime and onnxruntime-genai run.

    model.onnx             one graph for prefill and decode: the fused graph onnxruntime-genai's
                           builder writes (onnx_fused.py) or, where its ops' rules fail or when
                           asked, the plain graph (onnx_graph.py); float32, or INT8 / INT4
                           (onnx_quant.py); model.onnx.data beside it when large
    config.json            the checkpoint's Llama config (context, token ids, training-data record)
                           and, in its `tinyllm` section under "onnx", this export's record: graph,
                           quantization, accuracy level, opset, validation errors
    tokenizer.json         the checkpoint's tokenizer, and tokenizer_config.json for transformers
    genai_config.json      onnxruntime-genai's description of the graph (its schema's keys only),
                           so that `onnxruntime_genai.Model(dir)` loads the directory unchanged

A quantized checkpoint (`tinyllm quantize`) is exported with its own blocks in `MatMulNBits`
(see onnx_quant.py), never quantized again; its graph is validated against the PyTorch runtime
of that checkpoint, which computes with the same weights: to float32 rounding at accuracy level
0, within the level-4 tolerance where the kernel rounds activations to int8.

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
from export.onnx_quant import (INT4_BLOCK, NBitsBlocks, QuantizedCheckpoint, dequantized_weights, int4_weights,
                               quantize_int8, read_quantized_checkpoint, write_matmul_nbits)
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
# type, computing exactly what the PyTorch quantized runtime does. The defaults are the builder's:
# 4 for the CPU, 0 for CUDA (whose kernels compute in float16 whatever the level).
ACCURACY_LEVELS = (0, 4)
DEFAULT_ACCURACY_LEVEL = {"cpu": 4, "cuda": 0}
DEFAULT_OPSET = 17
# 13 is the oldest opset tinyllm's graphs are written and checked at; 20 the newest the TorchScript
# exporter writes. INT8's DynamicQuantizeLinear needs 11, the com.microsoft ops none.
MIN_OPSET, MAX_OPSET = 13, 20
# max |onnxruntime − PyTorch| / max |PyTorch logit| a kept export may show, PyTorch running the
# weights the graph holds (see validate). Float32 differs by rounding only. INT8 (dynamic) and
# INT4 at accuracy level 4 also quantize activations inside their kernels: measured up to 2.8e-2
# (INT8) and 1.6e-2 (INT4) on the test, demo and a random-init base model; the bounds are about
# 3× that. A mis-read block layout or scale gives errors of order 1.
TOLERANCE = {"none": 1e-4, "int8": 0.1, "int4": 0.05}
# A quantized checkpoint's graph at accuracy level 0 against its PyTorch runtime: the same weights
# and float32 activations on both sides, so float32 rounding only.
CHECKPOINT_TOLERANCE = 1e-4
# An exact graph computing in float16 (the CUDA variant): float16 rounding of the activations,
# measured 6.7e-4 on the test model.
FLOAT16_TOLERANCE = 5e-3
VALIDATION_PROMPTS = 2
VALIDATION_TOKENS = 24


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
    if quant == "int8" and target.device == "cuda":
        raise TinyLLMError("--quant int8 --device cuda: int8 from a float checkpoint is onnxruntime's dynamic "
                           "quantization, which runs on the CPU only; run `tinyllm quantize int8` and export that "
                           "quantized checkpoint (MatMulNBits, which CUDA runs)")
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
    steps = 2 if quant == "none" else 4  # write, [validate float32, quantize,] validate
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
            if quant == "int8":
                quantize_int8(path)
            else:
                linear = matmul_weights(proto) if target.graph == "plain" else {
                    name: w for name, w in graph_weights(model).items() if name.endswith(".weight.T")}
                blocks, left = int4_weights(linear)
                if left:
                    log(f"int4: {len(left)} weights stay float32, their input width is not a multiple of "
                        f"{INT4_BLOCK}: {', '.join(left[:4])}{' …' if len(left) > 4 else ''}")
                if target.graph == "plain":
                    write_matmul_nbits(proto, blocks, level)
                else:
                    proto = fused_graph(model.config, graph_weights(model, blocks), opset, level,
                                        target.float_type(quant))
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

    A float32 graph is held to PyTorch's float32 model. A quantized graph is held to PyTorch
    running the weights read back from the graph (so a mis-packed block or a wrong scale fails,
    whatever the quantization costs the model), and its distance to float32 is reported beside.
    A quantized checkpoint's graph is held to the given `reference`, the checkpoint's PyTorch
    model: as tightly as float32 at accuracy level 0, within the quantization's tolerance at
    level 4 (int8 activations in the kernel; no float32 model to report a distance to). A CUDA
    graph runs on the CUDA provider where there is one, else on the CPU, which has the same ops.
    """
    import onnxruntime as ort

    cuda = target.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    runtime = OnnxRuntime.load(directory, device="cuda" if cuda else "cpu")
    from_checkpoint = reference is not None
    if not from_checkpoint:
        reference = model if quant == "none" else with_weights(model, dequantized_weights(
            onnx.load(str(directory / MODEL_FILE))))
    # MatMulNBits at level 0 computes in the activation type: exact to the weights it holds.
    exact = quant == "none" or (target.accuracy_level == 0 and (from_checkpoint or quant == "int4"))
    tolerance = (CHECKPOINT_TOLERANCE if from_checkpoint else TOLERANCE["none"]) if exact else TOLERANCE[quant]
    if exact and target.float_type(quant) == np.float16:
        tolerance = FLOAT16_TOLERANCE
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
    """A copy of `model` whose linear layers hold `weights` ([K, N] by graph initializer name; the
    fused graph's packed `qkv_proj` is split back into q, k and v)."""
    c = model.config
    copy = Transformer(c)
    copy.load_state_dict(model.state_dict())
    unpacked = {}
    for name, weight in weights.items():
        if ".qkv_proj." in name:
            q, k = np.cumsum([c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim])
            for part, columns in zip("qkv", np.split(weight, [q, k], axis=1)):
                unpacked[name.replace("qkv_proj", f"{part}_proj")] = columns
        else:
            unpacked[name] = weight
    for name, weight in unpacked.items():
        module = copy.get_submodule(name.removesuffix(".weight.T").removeprefix("model."))
        # A fresh Parameter also unties the head from the embedding, which stays float32.
        module.weight = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(weight.T)))
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
        record["int4"] = {**nbits, "bits": 4, "block_size": INT4_BLOCK, "symmetric": True}
    elif quant == "int8":
        record["int8"] = {"method": "onnxruntime quantize_dynamic", "weights": "int8 per channel",
                          "activations": "uint8, per tensor at run time", "ops": "DynamicQuantizeLinear, MatMulInteger",
                          "provider": "CPUExecutionProvider"}
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
              help="none (float32, the default), int8 (onnxruntime dynamic INT8, CPU) or int4 (MatMulNBits, "
                   "block 32). A quantized checkpoint (tinyllm quantize) is written with its own blocks as "
                   "MatMulNBits; --quant defaults to, and must be, its scheme.")
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
