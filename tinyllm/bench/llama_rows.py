"""Measuring one GGUF row with llama.cpp's own tools.

  fidelity  `llama-perplexity --kl-divergence-base REF --kl-divergence`: REF is the torch-f32
            reference file (`kld.py`), so llama.cpp scores the very tokens the other rows were
            scored on and reports PPL, KL divergence and top-1 agreement against torch-f32 itself
  parity    for gguf-f32, also plain `llama-perplexity -f TEXT`: llama.cpp tokenizing the text
  speed     `llama-bench` (flags in `bench_flags`), once for prefill (-p P -n 0) and once for
            decode after a P-token prompt (-p 0 -n N -d P); llama-bench warms up once by itself;
            the median and min–max of its per-repetition samples
  memory    the larger peak RSS of the two llama-bench processes (VmHWM, polled while they run)
  check     `server_check`: one timed llama-server request, set against llama-bench's decode figure
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import tempfile
import time
from pathlib import Path

from tinyllm.bench.measure import SpeedSettings, peak_rss_bytes, summarize
from tinyllm.errors import TinyLLMError
from tinyllm.llama_cpp import LlamaCpp

_FIGURES = {
    "ppl": re.compile(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)"),
    "kld_mean": re.compile(r"Mean\s+KLD:\s*(-?[0-9.]+)"),
    "kld_median": re.compile(r"Median\s+KLD:\s*(-?[0-9.]+)"),
    "top1_agreement": re.compile(r"Same top p:\s*([0-9.]+)"),
}
_ATTEMPTS = 3  # see LlamaCppRuntime._run_perplexity: a busy machine can lose the last lines of a run


def run_measured(argv: list[str]) -> tuple[int, str, str, int | None]:
    """(exit status, stdout, stderr, peak RSS bytes) of one process; the peak is polled from /proc
    while it runs (VmHWM only grows), since its rusage would include ours (see peak_rss_bytes)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
        peak = None
        while proc.poll() is None:
            peak = max(peak or 0, peak_rss_bytes(proc.pid) or 0) or None
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), peak


def _failure(tool: str, code: int, err: str) -> TinyLLMError:
    lines = [ln for ln in err.strip().splitlines() if "error" in ln.lower()] or err.strip().splitlines()
    return TinyLLMError(f"{tool} failed (status {code}): {' | '.join(lines[-2:]) or 'no output'}")


def kl_divergence(llama_cpp: LlamaCpp, gguf: Path, reference: Path, n_ctx: int, threads: int, ngl: int) -> dict:
    """PPL, mean/median KLD and top-1 agreement of `gguf` against the reference file."""
    argv = [str(llama_cpp.tool("llama-perplexity")), "-m", str(gguf), "--kl-divergence-base", str(reference),
            "--kl-divergence", "-c", str(n_ctx), "-t", str(threads), "-tb", str(threads), "-ngl", str(ngl)]
    for _ in range(_ATTEMPTS):
        code, out, err, _ = run_measured(argv)
        if code != 0:
            raise _failure("llama-perplexity --kl-divergence", code, err)
        found = {k: pattern.search(out) for k, pattern in _FIGURES.items()}
        if all(found.values()):
            figures = {k: float(m.group(1)) for k, m in found.items()}
            figures["top1_agreement"] /= 100
            figures["nll"] = math.log(figures["ppl"])
            return figures
    raise TinyLLMError(f"llama-perplexity --kl-divergence on {gguf.name} printed no final statistics; "
                       f"last lines: {' | '.join(out.strip().splitlines()[-3:])}")


def bench_flags(settings: SpeedSettings, threads: int, ngl: int) -> list[str]:
    return ["-t", str(threads), "-r", str(settings.repeats), "-ngl", str(ngl), "-o", "json"]


def llama_bench(llama_cpp: LlamaCpp, gguf: Path, settings: SpeedSettings, threads: int, ngl: int) -> dict:
    """Prefill and decode tok/s summaries and the peak RSS, from two llama-bench runs."""
    exe = str(llama_cpp.tool("llama-bench"))
    common = ["-m", str(gguf), *bench_flags(settings, threads, ngl)]
    tests = {"prefill_tps": ["-p", str(settings.prompt_tokens), "-n", "0"],
             "decode_tps": ["-p", "0", "-n", str(settings.decode_tokens), "-d", str(settings.prompt_tokens)]}
    row, peak = {}, 0
    for key, test in tests.items():
        code, out, err, rss = run_measured([exe, *common, *test])
        if code != 0:
            raise _failure("llama-bench", code, err)
        try:
            samples = json.loads(out)[0]["samples_ts"]
        except (json.JSONDecodeError, IndexError, KeyError) as e:
            raise TinyLLMError(f"llama-bench printed no samples_ts for {gguf.name} ({e})") from None
        row[key] = summarize([float(s) for s in samples])
        peak = max(peak, rss or 0)
    row["peak_rss_bytes"] = peak or None
    return row


def server_check(gguf: Path, llama_cpp: LlamaCpp, prompt: list[int], settings: SpeedSettings, threads: int,
                 ngl: int, n_ctx: int) -> dict:
    """One real, timed llama-server request: the prompt, then N tokens (end of text ignored)."""
    from tinyllm.serve import LlamaServer

    with LlamaServer(gguf, ctx=n_ctx, threads=threads, n_gpu_layers=ngl, parallel=1,
                     llama_cpp_dir=llama_cpp.bin_dir) as server:
        payload = {"prompt": prompt, "n_predict": settings.decode_tokens, "temperature": 0, "ignore_eos": True,
                   "cache_prompt": False}
        server.request("/completion", payload)  # warm-up
        timings = server.request("/completion", payload).get("timings", {})
    if "predicted_per_second" not in timings:
        raise TinyLLMError("llama-server's answer has no timings; cannot check llama-bench against it")
    return {"server_decode_tps": timings["predicted_per_second"], "server_prompt_tps": timings.get("prompt_per_second"),
            "server_predicted_n": timings.get("predicted_n"), "server_prompt_n": timings.get("prompt_n")}
