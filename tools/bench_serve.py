"""Benchmark `tinyllm serve`: what the HTTP front costs, and throughput at 1, 4 and 8 concurrent clients.

Three servers on one checkpoint, each with the same threads and `--parallel`, one after the other:

- llama-server alone (the real binary on the checkpoint's F32 GGUF, requests sent to it directly);
- `tinyllm serve` of that GGUF (the same llama-server as a child, behind tinyllm's API, which
  checks each request, asks llama-server for the prompt's tokens, and forwards it);
- `tinyllm serve` of an ONNX directory (onnxruntime-genai in the server process; the directory is
  made by onnxruntime-genai's own model builder from the checkpoint unless --onnx names one).

Figures, each the median (min–max) of --repeats:
- one request's latency for a 1-token completion (what the front adds per request);
- tokens/s of one client (completion tokens / wall time of its request, prefill included);
- throughput with C clients at once, each sending --requests completions one after the other:
  all completion tokens / the wall time of the whole run.
Beside them, onnxruntime-genai in this process on the same request (its own `og.Generator` loop,
the same greedy tokens), so "through the server" has its in-process baseline, and, for 8 requests
at once, og's own batching `og.Engine` against 8 generators on threads (the choice the server made).

Requests are greedy completions of --new-tokens tokens; llama-server is asked to ignore
end-of-sequence so that every request decodes exactly N tokens there. Run it under the timing lock:

    flock /tmp/tinyllm-timing.lock .venv/bin/python tools/bench_serve.py --checkpoint runs/demo \\
        --json runs/bench_serve.json
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import httpx
import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from bench_common import (  # noqa: E402
    CpuShare, load_average, machine_info, machine_line, share_lines, spread, summarize, table, write_json)
from export.gguf import export_gguf  # noqa: E402
from tinyllm.chat import END_OF_TEXT, IM_END  # noqa: E402
from tinyllm.cli_support import Command  # noqa: E402
from tinyllm.errors import TinyLLMError  # noqa: E402
from tinyllm.runtime.llama_cpp_runtime import read_gguf  # noqa: E402
from tinyllm.serve.llama_server import LlamaServer, free_port, wait_healthy  # noqa: E402

PROMPT = "Mira walked to the harbour early in the morning, and"


class Endpoint:
    """Somewhere to POST completions: a URL and the headers it needs."""

    def __init__(self, url: str, headers: dict | None = None):
        self.url, self.headers = url, headers or {}

    def complete(self, http: httpx.Client, prompt: str, n: int) -> int:
        body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                "ignore_eos": True}
        response = http.post(self.url + "/v1/completions", json=body, headers=self.headers, timeout=600)
        if response.status_code != 200:
            raise TinyLLMError(f"{self.url}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()["usage"]["completion_tokens"]


def latency(endpoint: Endpoint, repeats: int) -> dict:
    with httpx.Client() as http:
        endpoint.complete(http, PROMPT, 1)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            endpoint.complete(http, PROMPT, 1)
            samples.append(time.perf_counter() - start)
    return summarize([s * 1000 for s in samples])


def throughput(endpoint: Endpoint, clients: int, requests: int, n: int) -> float:
    """Completion tokens per second with `clients` sending `requests` each, one after the other."""
    def client(c: int) -> int:
        with httpx.Client() as http:
            return sum(endpoint.complete(http, f"Story {c}-{i}. {PROMPT}", n) for i in range(requests))

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(client, range(clients)))
    return tokens / (time.perf_counter() - start)


def measure(endpoint: Endpoint, args: dict) -> dict:
    """Latency, one client's tokens/s and throughput at each client count, --repeats times each."""
    out = {"latency_ms": latency(endpoint, args["latency_repeats"])}
    throughput(endpoint, 1, 1, args["new_tokens"])  # warm-up
    for clients in args["clients"]:
        out[f"tok_s_{clients}"] = summarize([throughput(endpoint, clients, args["requests"], args["new_tokens"])
                                             for _ in range(args["repeats"])])
    return out


class TinyllmServe:
    """`tinyllm serve MODEL` as a process, up once /health answers."""

    def __init__(self, model: Path, threads: int, parallel: int, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tinyllm.cli", "serve", str(model), "--port",
                                          str(self.port), "--threads", str(threads), "--parallel", str(parallel)],
                                         stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy(self.url, self.proc, 300, f"tinyllm serve {model}", lambda: log.read_text()[-1000:])
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)


def in_process_og(onnx: Path, threads: int, n: int, repeats: int) -> dict:
    """onnxruntime-genai without the server: one request's tokens/s, and 8 at once two ways."""
    import onnxruntime_genai as og

    config = og.Config(str(onnx))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    stop = set(tokenizer.eos_token_ids) | {t for t in map(tokenizer.to_token_id, (END_OF_TEXT, IM_END)) if t >= 0}

    def tokens_of(prompt: str):
        """The greedy tokens of one request, as they come."""
        ids = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + n, do_sample=False, batch_size=1)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        for _ in range(n):
            if generator.is_done():
                return
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in stop:
                return
            yield token

    def one(prompt: str) -> int:
        return sum(1 for _ in tokens_of(prompt))

    def rate(fn) -> float:
        start = time.perf_counter()
        tokens = fn()
        return tokens / (time.perf_counter() - start)

    def engine_batch(prompts: list[str]) -> int:
        engine = og.Engine(model)
        events = engine.create_event_buffer(64)
        for prompt in prompts:
            request = engine.create_request()
            turn = og.TurnOptions(request)
            turn.set_max_generated_tokens(n)
            turn.set_min_generated_tokens(n)
            request.begin_turn(np.array(tokenizer.encode(prompt), dtype=np.int32), turn)
        tokens = 0
        while engine.has_pending_requests():
            engine.run(events)
            tokens += len(events)
        return tokens

    def handed_over(on_worker_thread: bool) -> float:
        """One request's tokens/s when each token goes to an asyncio consumer, as in a server: from a
        worker thread (call_soon_threadsafe, og holding the GIL meanwhile) or from the loop's own thread."""
        async def consume() -> int:
            loop, tokens = asyncio.get_running_loop(), asyncio.Queue()

            def on_thread() -> None:
                for token in itertools.chain(tokens_of(PROMPT), [None]):
                    loop.call_soon_threadsafe(tokens.put_nowait, token)

            async def on_loop() -> None:  # as the server's decode loop: a step, then the loop's turn
                for token in itertools.chain(tokens_of(PROMPT), [None]):
                    tokens.put_nowait(token)
                    await asyncio.sleep(0)

            if on_worker_thread:
                loop.run_in_executor(None, on_thread)
            else:
                loop.create_task(on_loop())
            count = 0
            while await tokens.get() is not None:
                count += 1
            return count

        start = time.perf_counter()
        count = asyncio.run(consume())
        return count / (time.perf_counter() - start)

    prompts = [f"Story {c}-0. {PROMPT}" for c in range(8)]
    one(PROMPT)
    with ThreadPoolExecutor(8) as pool:
        threads_8 = [rate(lambda: sum(pool.map(one, prompts))) for _ in range(repeats)]
    return {"tok_s_1": summarize([rate(lambda: one(PROMPT)) for _ in range(repeats)]),
            "threads_8": summarize(threads_8),
            "og_engine_8": summarize([rate(lambda: engine_batch(prompts)) for _ in range(repeats)]),
            "handoff_worker_thread": summarize([handed_over(True) for _ in range(repeats)]),
            "handoff_loop_thread": summarize([handed_over(False) for _ in range(repeats)])}


@click.command(cls=Command)
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Float32 checkpoint directory (e.g. the demo preset's runs/demo).")
@click.option("--onnx", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="ONNX directory for onnxruntime-genai [made by its builder from --checkpoint].")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--parallel", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests each server decodes at once (tinyllm serve --parallel, llama-server -np).")
@click.option("--new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--requests", type=click.IntRange(min=1), default=4, show_default=True,
              help="Requests each client sends, one after the other.")
@click.option("--clients", default="1,4,8", show_default=True, help="Client counts to measure.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--latency-repeats", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(checkpoint, onnx, threads, parallel, new_tokens, requests, clients, repeats, latency_repeats, json_path):
    """Benchmark tinyllm serve's backends and what its HTTP front costs."""
    args = {"new_tokens": new_tokens, "requests": requests, "repeats": repeats, "latency_repeats": latency_repeats,
            "clients": [int(c) for c in clients.split(",")]}
    load_before, share = load_average(), CpuShare()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve.") as tmp:
        tmp = Path(tmp)
        gguf = tmp / "model.gguf"
        export_gguf(checkpoint, gguf, "f32", log=lambda _: None, progress=False)
        if onnx is None:
            onnx = tmp / "onnx"
            subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o",
                            str(onnx), "-p", "fp32", "-e", "cpu", "-c", str(tmp / "builder-cache")],
                           check=True, capture_output=True)
        click.echo("llama-server alone …", err=True)
        n_ctx = int(read_gguf(gguf).get_field("llama.context_length").contents())  # as tinyllm serve sets it
        with LlamaServer(gguf, ctx=n_ctx, threads=threads, parallel=parallel) as direct:
            results["llama-server alone"] = measure(Endpoint(direct.url, direct.headers), args)
        for label, model in (("tinyllm serve (llama-server)", gguf), ("tinyllm serve (onnxruntime-genai)", onnx)):
            click.echo(f"{label} …", err=True)
            server = TinyllmServe(model, threads, parallel, tmp / f"{label}.log")
            try:
                results[label] = measure(Endpoint(server.url), args)
            finally:
                server.stop()
        click.echo("onnxruntime-genai in this process …", err=True)
        in_process = in_process_og(onnx, threads, new_tokens, repeats)
    info = {**machine_info(), "load_before": load_before, "load_after": load_average()}
    cpu_share = share.stop()

    headers = ["server", "1-token latency ms", *[f"tok/s, {c} client{'s' * (c > 1)}" for c in args["clients"]]]
    rows = [[label, spread(r["latency_ms"], "{:.1f}"), *[spread(r[f"tok_s_{c}"]) for c in args["clients"]]]
            for label, r in results.items()]
    click.echo(f"machine: {machine_line(info)}; load {load_before} before, {info['load_after']} after")
    for line in share_lines(cpu_share, info["cpus_usable"]):
        click.echo(line)
    click.echo(f"{threads} threads, --parallel {parallel}, greedy completions of {new_tokens} tokens, "
               f"{requests} requests per client, median (min–max) of {repeats}")
    click.echo(table(headers, rows))
    proxy, alone = results["tinyllm serve (llama-server)"], results["llama-server alone"]
    click.echo("front's cost: " + ", ".join(
        f"{c} client{'s' * (c > 1)} {proxy[f'tok_s_{c}']['median'] / alone[f'tok_s_{c}']['median']:.2f}x"
        for c in args["clients"]) + f" of llama-server's throughput; latency +"
        f"{proxy['latency_ms']['median'] - alone['latency_ms']['median']:.1f} ms")
    served_onnx = results["tinyllm serve (onnxruntime-genai)"]["tok_s_1"]["median"]
    alone_onnx = in_process["tok_s_1"]["median"]
    click.echo(f"onnxruntime-genai, one client: {served_onnx:,.0f} tok/s through the server, {alone_onnx:,.0f} "
               f"in-process ({served_onnx / alone_onnx:.2f}x)")
    click.echo(f"onnxruntime-genai in-process, one request, each token handed to an asyncio consumer: from a worker "
               f"thread {spread(in_process['handoff_worker_thread'])} tok/s, from the loop's thread "
               f"{spread(in_process['handoff_loop_thread'])}")
    click.echo(f"onnxruntime-genai in-process, 8 requests at once: 8 generators on threads "
               f"{spread(in_process['threads_8'])} tok/s, og.Engine's batching {spread(in_process['og_engine_8'])}")
    write_json(json_path, {"settings": {**args, "threads": threads, "parallel": parallel,
                                        "checkpoint": str(checkpoint)},
                           "results": results, "in_process_onnxruntime_genai": in_process,
                           "machine": info, "cpu_share": cpu_share})


if __name__ == "__main__":
    main()
