"""`tinyllm-bench`'s work: one text, one set of tokens, every format measured the same way.

`run_bench` reads the checkpoint and the text, makes (or reuses) each format's artifact, measures
torch-f32 first (its logits become the reference file every other row is compared against), then
each requested format, and returns the results dict that `report.py` renders (schema: every key
`report.write_outputs` reads). A row that fails keeps its error and the run goes on; bad input
(format names, data file, context, missing llama.cpp) stops it before any work.
"""

from __future__ import annotations

import datetime
import platform
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from tinyllm import __version__
from tinyllm.bench.artifacts import Artifacts, artifact_bytes
from tinyllm.bench.formats import FORMATS, PARITY_PCT, REFERENCE, Format, check_bounds, parity
from tinyllm.bench.frontier import LLAMA_CPP, TINYLLM, goal_summary
from tinyllm.bench.llama_rows import bench_flags, kl_divergence, llama_bench, server_check
from tinyllm.bench.machine import machine_info, usable_cpus
from tinyllm.bench.measure import SpeedSettings, in_child, measure_row
from tinyllm.checkpoint import CONFIG_FILE, TOKENIZER_FILE, check_checkpoint_dir
from tinyllm.config import ModelConfig
from tinyllm.errors import TinyLLMError
from tinyllm.llama_cpp import LlamaCpp, find_llama_cpp
from tinyllm.perplexity import chunks as split_chunks
from tinyllm.tokenizer import Tokenizer

REFERENCE_FILE = "reference-torch-f32.kld"
# Who made each artifact, by its maker; the rest are tinyllm's (frontier.py counts only those as ours).
MADE_BY = {"llama-quantize": LLAMA_CPP, "genai-builder": "onnxruntime-genai", "onnx-dynamic": "onnxruntime"}


def evaluation_text(config: ModelConfig, data: str) -> str:
    from tinyllm.dataset import DataSpec, load_splits
    from tinyllm.evaluate import plain_text, read_text

    if data != "validation":
        return read_text(data)
    if not config.extra.get("data"):
        raise TinyLLMError("this checkpoint records no training data, so it has no validation split; pass --data FILE")
    _, val_docs = load_splits(DataSpec.from_dict(config.extra["data"]))
    return plain_text(val_docs)


def versions(llama_cpp: LlamaCpp | None) -> dict:
    found = {}
    for package in ("torch", "onnxruntime", "onnxruntime-genai", "numpy", "gguf", "onnx"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["llama.cpp"] = llama_cpp.version() if llama_cpp else None
    found["python"] = platform.python_version()
    return found


class Bench:
    def __init__(self, checkpoint: Path, out: Path, data: str, n_ctx: int | None, threads: int, device: str,
                 speed: SpeedSettings, llama_cpp: LlamaCpp | None, calib_tokens: int, log: Callable[[str], None],
                 compile_step: bool = True):
        self.checkpoint, self.out, self.data, self.threads, self.device = checkpoint, out, data, threads, device
        self.compile_step = compile_step
        self.config = ModelConfig.load(checkpoint / CONFIG_FILE)
        self.text = evaluation_text(self.config, data)
        self.n_ctx = n_ctx or self.config.max_seq_len
        if self.n_ctx > self.config.max_seq_len:
            raise TinyLLMError(f"--ctx {self.n_ctx} is longer than the model's context ({self.config.max_seq_len})")
        self.tokens = Tokenizer.load(checkpoint / TOKENIZER_FILE).encode(self.text, parse_special=False)
        self.chunks = [list(c) for c in split_chunks(self.tokens, self.n_ctx)]
        if speed.prompt_tokens + speed.decode_tokens > self.config.max_seq_len:
            raise TinyLLMError(f"--prompt-tokens {speed.prompt_tokens} + --decode-tokens {speed.decode_tokens} exceed "
                               f"the model's context ({self.config.max_seq_len}); make them smaller")
        self.speed, self.llama_cpp, self.log = speed, llama_cpp, log
        self.ngl = 0 if device == "cpu" else 999
        self.reference = out / REFERENCE_FILE
        self.artifacts = Artifacts(checkpoint, out, llama_cpp, calib_tokens, log, threads, device)

    def measure(self, fmt: Format) -> dict:
        artifact = self.artifacts.get(fmt)
        row = {"format": fmt.name, "runtime": fmt.runtime, "source": fmt.what, "path": str(artifact.path),
               "made_by": MADE_BY.get(fmt.make, TINYLLM), "imatrix": fmt.imatrix,
               "build_seconds": artifact.build_seconds, "cached": artifact.cached,
               "size_bytes": artifact_bytes(fmt, artifact.path)}
        target_bpw = self.artifacts.target_bpw(fmt)
        if target_bpw is not None:
            row["target_bpw"] = target_bpw
        if fmt.gguf:
            row["describe"] = f"{fmt.name} on llama.cpp ({self.llama_cpp.version()}), {self.threads} threads"
            row.update(kl_divergence(self.llama_cpp, artifact.path, self.reference, self.n_ctx, self.threads, self.ngl))
            row.update(llama_bench(self.llama_cpp, artifact.path, self.speed, self.threads, self.ngl))
            if fmt.name == "gguf-f32":
                from tinyllm.runtime.llama_cpp_runtime import LlamaCppRuntime

                runtime = LlamaCppRuntime.load(artifact.path, self.device, self.threads, self.llama_cpp.bin_dir)
                try:
                    row["ppl_own_tokenizer"] = runtime.perplexity(self.text, self.n_ctx).ppl
                except TinyLLMError as e:  # e.g. a text of one chunk: the KL figures above still stand
                    row["notes"] = [f"llama-perplexity -f (llama.cpp tokenizing) not run: {e}"]
        else:
            row.update(in_child(measure_row, str(artifact.path), self.device, self.threads, self.chunks, self.speed,
                                str(self.reference), fmt.name == REFERENCE, self.compile_step))
        return row

    def check_server(self, rows: dict[str, dict]) -> dict | None:
        """llama-bench's decode figure against one timed llama-server request (gguf-f32 if measured)."""
        measured = [n for n, r in rows.items() if FORMATS[n].gguf and r.get("decode_tps")]
        if not measured:
            return None
        name = "gguf-f32" if "gguf-f32" in measured else measured[0]
        prompt = self.tokens[:self.speed.prompt_tokens]
        try:
            check = server_check(Path(rows[name]["path"]), self.llama_cpp, prompt, self.speed, self.threads,
                                 self.ngl, self.n_ctx)
        except TinyLLMError as e:
            return {"format": name, "error": str(e)}
        bench = rows[name]["decode_tps"]["median"]
        return {"format": name, "llama_bench_decode_tps": bench, **check,
                "ratio": check["server_decode_tps"] / bench}


def run_bench(checkpoint: str | Path, formats: list[Format], out: str | Path, data: str = "validation",
              n_ctx: int | None = None, threads: int | None = None, device: str = "cpu",
              prompt_tokens: int | None = None, decode_tokens: int | None = None, warmup: int = 1,
              repeats: int = 5, llama_cpp_dir: str | Path | None = None,
              calib_tokens: int = 16384, log: Callable[[str], None] = print, command: str = "",
              compile_step: bool = True) -> dict:
    checkpoint, out = check_checkpoint_dir(checkpoint), Path(out)
    from quantize.checkpoint import quantization_info

    if quantization_info(checkpoint) is not None:
        raise TinyLLMError(f"{checkpoint}: is a quantized checkpoint; the bench starts from the float32 checkpoint "
                           "and makes every format from it")
    threads = threads or usable_cpus()
    if threads <= 0:
        raise TinyLLMError(f"--threads {threads}: must be positive")
    needs_llama = any(f.gguf for f in formats)
    llama_cpp = find_llama_cpp(llama_cpp_dir) if needs_llama else None
    config = ModelConfig.load(checkpoint / CONFIG_FILE)
    prompt_tokens = prompt_tokens or min(128, config.max_seq_len // 2)
    decode_tokens = decode_tokens or max(1, min(64, config.max_seq_len - prompt_tokens))
    speed = SpeedSettings(prompt_tokens, decode_tokens, warmup, repeats)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(checkpoint, out, data, n_ctx, threads, device, speed, llama_cpp, calib_tokens, log, compile_step)
    # torch-f32 goes first: its logits are the reference file every other row is compared against.
    order = [FORMATS[REFERENCE]] + [f for f in formats if f.name != REFERENCE]
    rows: dict[str, dict] = {}
    with tqdm(order, desc="bench", unit="format", file=sys.stderr, leave=False, disable=None) as bar:
        for fmt in bar:
            bar.set_postfix_str(fmt.name)
            try:
                rows[fmt.name] = bench.measure(fmt)
            except TinyLLMError as e:
                if fmt.name == REFERENCE:
                    raise TinyLLMError(f"torch-f32, the reference, could not be measured: {e}") from None
                rows[fmt.name] = {"format": fmt.name, "runtime": fmt.runtime, "source": fmt.what, "error": str(e)}
            log(f"{fmt.name}: " + (f"error: {rows[fmt.name]['error']}" if "error" in rows[fmt.name]
                                   else f"PPL {rows[fmt.name]['ppl']:.4f}"))
    n_params = config.num_params()
    base = rows[REFERENCE]["ppl"]
    for row in rows.values():
        row.setdefault("error", None)
        row.setdefault("flags", [])
        if row.get("ppl") is not None:
            row["delta_ppl_pct"] = 100 * (row["ppl"] / base - 1)
        if row.get("size_bytes") is not None:
            row["bits_per_weight"] = 8 * row["size_bytes"] / n_params
    check_bounds(rows)
    goal = goal_summary(rows)
    server = bench.check_server(rows) if needs_llama else None
    return {
        "tinyllm_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "machine": machine_info(),
        "versions": versions(llama_cpp),
        "device": device,
        "threads": threads,
        "checkpoint": str(checkpoint),
        "n_params": n_params,
        "data": {"source": data, "chars": len(bench.text), "tokens": len(bench.tokens), "n_ctx": bench.n_ctx,
                 "chunks": len(bench.chunks),
                 "scored_tokens": len(bench.chunks) * (bench.n_ctx - 1 - bench.n_ctx // 2)},
        "speed": {**asdict(speed), "compile": compile_step,
                  "llama_bench_flags": bench_flags(speed, threads, bench.ngl) if needs_llama else None},
        "bounds": {"parity_pct": PARITY_PCT, "rows": {n: r["bound"]["text"] for n, r in rows.items()}},
        "rows": list(rows.values()),
        "parity": parity(rows),
        "goal": goal,
        "server_check": server,
    }
