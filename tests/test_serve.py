"""`tinyllm serve` on every backend, through the official `openai` client against a real server.

One server per backend (a GGUF file, a float32 and a quantized checkpoint directory on
llama-server, an ONNX directory on onnxruntime-genai), each a real `tinyllm serve` process: the
models are listed, a chat answered whole and streamed, a completion made, 8 clients × 20 requests
served, every kind of bad request refused with its 4xx while the server stays up, and Ctrl-C,
SIGTERM and kill -9 leave no process behind and the port free.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from conftest import require
from export.gguf import export_gguf
from tinyllm.cli import main as tinyllm_cli
from tinyllm.errors import TinyLLMError
from tinyllm.generate import stop_ids
from tinyllm.runtime import load_runtime
from tinyllm.sampling import SamplingParams
from tinyllm.serve.app import Admission
from tinyllm.serve.cli import bind
from tinyllm.serve.llama_server import check_port_free, free_port, wait_healthy
from tinyllm.serve.models import checkpoint_gguf
from tinyllm.serve.onnx_engine import StopStrings
from tinyllm.serve.protocol import ApiError

pytestmark = pytest.mark.slow

N_CTX = 128  # the test preset's context
PROMPT = "Mira walked to the harbour"


class Served:
    """A `tinyllm serve` process, up once /health answers; its output goes to files (no pipe to fill)."""

    def __init__(self, model: Path, tmp: Path, *flags: str, env: dict | None = None,
                 tinyllm: tuple[str, ...] = (sys.executable, "-m", "tinyllm.cli"), cwd: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = tmp / f"serve-{self.port}.out", tmp / f"serve-{self.port}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([*tinyllm, "serve", str(model), "--port", str(self.port), "--threads", "1",
                                          *flags], stdout=out, stderr=err, env={**os.environ, **(env or {})}, cwd=cwd)
        try:
            wait_healthy(self.url, self.proc, 120, "tinyllm serve", self.output)
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def gone(pid: int, timeout: float = 15.0) -> bool:
    """True once `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def port_frees(host: str, port: int, timeout: float = 10.0) -> None:
    """`check_port_free` once the port is released. A killed llama-server's leader thread shows as a
    zombie (`gone`) while its other threads still exit, and the socket closes with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check_port_free(host, port)
        except TinyLLMError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def quantized_checkpoint(trained_checkpoint, tmp_path_factory):
    from quantize.quantizer import quantize_checkpoint

    out = tmp_path_factory.mktemp("served-int8") / "int8"
    quantize_checkpoint(trained_checkpoint, out, "int8")
    return out


@pytest.fixture(scope="module")
def isolated_cache(tmp_path_factory, llama_cpp):
    """The environment a server runs in: its own cache for checkpoint exports, our llama.cpp tools."""
    env = {"XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg-cache"))}
    if llama_cpp.bin_dir is not None:
        env["TINYLLM_LLAMA_CPP"] = str(llama_cpp.bin_dir)
    return env


BACKENDS = ["gguf", "checkpoint", "quantized", "onnx"]


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, tmp_path_factory):
    """(server, the model it serves, the path of the model whose greedy tokens it must reproduce)."""
    backend = request.param
    reference = request.getfixturevalue("trained_checkpoint")
    env = None
    if backend == "onnx":
        require("openai", 'pip install -e ".[test]"')
        model = request.getfixturevalue("onnx_model_dir")
    else:
        env = request.getfixturevalue("isolated_cache")
        if backend == "gguf":
            model = request.getfixturevalue("gguf_export")("f32")
        elif backend == "checkpoint":
            model = reference
        else:
            model = reference = request.getfixturevalue("quantized_checkpoint")
    server = Served(model, tmp_path_factory.mktemp(f"serve-{backend}"), "--parallel", "4", env=env)
    try:
        yield server, backend, reference
    finally:
        server.stop()


def client_for(server: Served, key: str = "none"):
    openai = require("openai", 'pip install -e ".[test]"')
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_the_banner_says_what_was_done(served):
    server, backend, _ = served
    text = server.output()
    assert f"{server.url}/v1/chat/completions" in text and "Ctrl-C stops it." in text, text
    expected = {"gguf": "with llama-server", "checkpoint": "(float32 checkpoint) → ",
                "quantized": "q8_0 blocks copied", "onnx": "with onnxruntime-genai"}[backend]
    assert expected in text, text


def test_models_chat_streamed_chat_and_completion(served):
    server, backend, _ = served
    client = client_for(server)
    (card,) = client.models.list().data
    model = card.id
    messages = [{"role": "user", "content": "Where does Mira live?"}]

    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
    answer = chat.choices[0]
    assert isinstance(answer.message.content, str) and "<|im_" not in answer.message.content
    assert answer.finish_reason in ("stop", "length")
    assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens <= 16
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    if answer.finish_reason == "length":
        assert chat.usage.completion_tokens == 16

    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer.message.content  # greedy: the same answer, in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answer.finish_reason
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    completion = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
    assert completion.choices[0].finish_reason in ("stop", "length") and completion.usage.completion_tokens <= 12
    assert completion.usage.prompt_tokens == len(load_runtime_cached(served).tokenizer.encode(PROMPT))

    sampled = [client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=7)
               .choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]  # a seed makes sampling reproducible


_RUNTIMES: dict = {}


def load_runtime_cached(served):
    reference = served[2]
    if reference not in _RUNTIMES:
        _RUNTIMES[reference] = load_runtime(reference)
    return _RUNTIMES[reference]


def test_greedy_completion_is_the_pytorch_models(served):
    """The served model is the checkpoint: greedy text equals PyTorch's on the same weights."""
    server, backend, _ = served
    runtime = load_runtime_cached(served)
    ids = runtime.tokenizer.encode(PROMPT)
    ours = list(runtime.generate(ids, 24, SamplingParams(temperature=0.0, repetition_penalty=1.0), stop_ids(runtime)))
    client = client_for(server)
    completion = client.completions.create(model=client.models.list().data[0].id, prompt=PROMPT, max_tokens=24,
                                           temperature=0)
    assert completion.choices[0].text == runtime.tokenizer.decode(ours), backend
    assert completion.usage.completion_tokens == len(ours)


def test_eight_clients_twenty_requests_each_without_an_error(served):
    server, _, _ = served
    client = client_for(server)
    model = client.models.list().data[0].id

    def one_client(n: int) -> int:
        answered = 0
        for i in range(20):
            r = client.completions.create(model=model, prompt=f"Story {n}-{i}:", max_tokens=4, seed=i)
            answered += r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 4
        return answered

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(one_client, range(8))) == 160


def bad_requests(model: str) -> list[tuple[str, str, bytes | dict, int, str | None]]:
    """(what, path, body, status, the error's param or code) for each kind of request that must be refused."""
    chat = "/v1/chat/completions"
    hello = [{"role": "user", "content": "hello"}]
    return [
        ("bad JSON", chat, b'{"messages": [', 400, "invalid_json"),
        ("not an object", chat, b"[1, 2]", 400, "invalid_json"),
        ("unknown model", chat, {"model": "no-such-model", "messages": hello}, 404, "model_not_found"),
        ("max_tokens 0", chat, {"model": model, "messages": hello, "max_tokens": 0}, 400, "max_tokens"),
        ("max_tokens < 0", chat, {"model": model, "messages": hello, "max_tokens": -5}, 400, "max_tokens"),
        ("max_tokens beyond the context", chat, {"model": model, "messages": hello, "max_tokens": N_CTX + 1}, 400,
         "context_length_exceeded"),
        ("chat longer than the context", chat,
         {"model": model, "messages": [{"role": "user", "content": "word " * 400}]}, 400, "context_length_exceeded"),
        ("prompt longer than the context", "/v1/completions", {"model": model, "prompt": "word " * 400}, 400,
         "context_length_exceeded"),
        ("max_tokens as a string", chat, {"model": model, "messages": hello, "max_tokens": "8"}, 400, "max_tokens"),
        ("temperature as a string", chat, {"model": model, "messages": hello, "temperature": "hot"}, 400,
         "temperature"),
        ("stream as a string", chat, {"model": model, "messages": hello, "stream": "yes"}, 400, "stream"),
        ("messages as a string", chat, {"model": model, "messages": "hello"}, 400, "messages"),
        ("content as a number", chat, {"model": model, "messages": [{"role": "user", "content": 5}]}, 400, None),
        ("unknown role", chat, {"model": model, "messages": [{"role": "robot", "content": "hi"}]}, 400,
         "messages.0.role"),
        ("prompt as a number", "/v1/completions", {"model": model, "prompt": 5}, 400, None),
        ("no such route", "/v1/embeddings", {"model": model, "input": "hi"}, 404, None),
    ]


def test_every_bad_request_gets_its_4xx_and_the_server_stays_up(served):
    server, _, _ = served
    model = client_for(server).models.list().data[0].id
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for what, path, body, status, marker in bad_requests(model):
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = http.post(path, content=content, headers={"Content-Type": "application/json"})
            assert response.status_code == status, (what, response.status_code, response.text)
            error = response.json()["error"]
            assert error["message"] and error["type"], (what, error)
            if marker:
                assert marker in (error["param"], error["code"]), (what, error)
        good = http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 4})
        assert good.status_code == 200 and good.json()["choices"][0]["text"] is not None
        assert http.get("/health").json()["status"] == "ok"
    assert server.proc.poll() is None


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_stopping_leaves_no_process_and_frees_the_port(how, gguf_export, isolated_cache, tmp_path):
    server = Served(gguf_export("f32"), tmp_path, env=isolated_cache)
    children = server.children()
    assert len(children) == 1, server.output()  # llama-server, on its private port
    inner_ports = [line for line in Path(f"/proc/{children[0]}/cmdline").read_text().split("\0")]
    child_port = int(inner_ports[inner_ports.index("--port") + 1])
    server.proc.send_signal(getattr(signal, how))
    status = server.proc.wait(timeout=30)
    assert status == (-9 if how == "SIGKILL" else 0), server.output()
    assert gone(children[0]), f"llama-server {children[0]} outlived tinyllm serve ({how})"
    check_port_free("127.0.0.1", server.port)
    port_frees("127.0.0.1", child_port)


def test_a_llama_server_that_dies_stops_tinyllm_serve(gguf_export, isolated_cache, tmp_path):
    server = Served(gguf_export("f32"), tmp_path, env=isolated_cache)
    (child,) = server.children()
    os.kill(child, signal.SIGKILL)
    assert server.proc.wait(timeout=30) == 1
    assert "Error: llama-server was killed by SIGKILL; tinyllm serve stopped" in server.output(), server.output()
    check_port_free("127.0.0.1", server.port)


def test_admission_lets_parallel_run_queue_wait_and_refuses_the_rest():
    async def scenario():
        admission = Admission(parallel=1, queue=1)
        running = admission.slot()
        await running.__aenter__()
        waiting = asyncio.create_task(admission.slot().__aenter__())
        await asyncio.sleep(0)
        assert admission.waiting == 1 and not waiting.done()
        with pytest.raises(ApiError) as refused:
            await admission.slot().__aenter__()
        assert refused.value.status == 503 and refused.value.code == "server_busy"
        await running.__aexit__(None, None, None)
        await waiting  # the freed slot goes to the one that waited
        assert admission.waiting == 0

    asyncio.run(scenario())


def test_an_api_key_is_required_and_the_body_is_capped(onnx_model_dir, tmp_path):
    server = Served(onnx_model_dir, tmp_path, "--api-key", "s3cret", "--max-body", "2K")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/health").status_code == 200  # open: load balancers probe it
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                refused = http.get("/v1/models", headers=headers)
                assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
            key = {"Authorization": "Bearer s3cret"}
            big = http.post("/v1/completions", headers=key, json={"prompt": "x" * 4096, "max_tokens": 1})
            assert big.status_code == 413 and "2,048 bytes" in big.json()["error"]["message"]
        client = client_for(server, key="s3cret")
        model = client.models.list().data[0].id
        assert client.completions.create(model=model, prompt=PROMPT, max_tokens=3).usage.completion_tokens <= 3
    finally:
        server.stop()


def test_a_checkpoint_is_exported_once_losslessly_and_then_reused(trained_checkpoint, quantized_checkpoint,
                                                                 gguf_export, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for checkpoint, reference in ((trained_checkpoint, gguf_export("f32")), (quantized_checkpoint, None)):
        said: list[str] = []
        first = checkpoint_gguf(checkpoint, said.append)
        assert "exported in" in said[-1] and str(first) in said[-1]
        second = checkpoint_gguf(checkpoint, said.append)
        assert second == first and "reused from the cache" in said[-1]
        if reference is None:  # what `tinyllm-export gguf` writes for it, byte for byte
            reference = tmp_path / "direct.gguf"
            export_gguf(checkpoint, reference, log=lambda _: None, progress=False)
        assert first.read_bytes() == Path(reference).read_bytes()


def test_a_model_that_cannot_be_served_gets_one_clear_line(trained_checkpoint, tmp_path):
    runner = CliRunner()
    cases = [
        (tmp_path / "missing", "no such file or directory"),
        (tmp_path, "not a model tinyllm serves"),
    ]
    (tmp_path / "plain.txt").write_text("hello")
    cases.append((tmp_path / "plain.txt", "not a GGUF file"))
    onnx_only = tmp_path / "onnx-only"
    onnx_only.mkdir()
    (onnx_only / "model.onnx").write_bytes(b"")
    cases.append((onnx_only, "genai_config.json"))
    for model, message in cases:
        result = runner.invoke(tinyllm_cli, ["serve", str(model), "--port", "0"])
        assert result.exit_code == 1 and message in result.output, (model, result.output)


def test_a_directory_onnxruntime_genai_refuses_gets_its_reason(onnx_model_dir, tmp_path):
    refused = tmp_path / "refused"
    shutil.copytree(onnx_model_dir, refused)
    config = json.loads((refused / "genai_config.json").read_text())
    config["model"]["not_in_the_schema"] = 1  # og rejects any key its schema does not know
    (refused / "genai_config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(tinyllm_cli, ["serve", str(refused), "--port", "0"])
    assert result.exit_code == 1 and "onnxruntime-genai cannot load it" in result.output, result.output
    assert "not_in_the_schema" in result.output


def test_serve_refuses_a_taken_port(gguf_export):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(tinyllm_cli, ["serve", str(gguf_export("f32")), "--port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is not available" in result.output and "--port" in result.output


def test_the_servers_connections_send_without_waiting_for_acks():
    """TCP_NODELAY on the listening socket, and so on every connection it accepts: without it each
    kept-alive response stalled ~44 ms on a delayed ACK (docs/serving.md)."""
    listener = bind("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            for sock in (listener, accepted):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_serve_refuses_a_context_longer_than_the_models(gguf_export, isolated_cache, monkeypatch):
    for name, value in isolated_cache.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(tinyllm_cli, ["serve", str(gguf_export("f32")), "--port", "0", "--ctx", "4096"])
    assert result.exit_code == 1 and f"has a context of {N_CTX} tokens" in result.output, result.output


@pytest.mark.parametrize("pieces, stops, sent, stopped", [
    (["Hello", " wor", "ld"], [], "Hello world", False),
    (["Hello", " wor", "ld"], ["world"], "Hello ", True),
    (["abc", "d"], ["cd"], "ab", True),
    (["ab", "cx"], ["cd"], "abcx", False),  # "c" is held back until "x" shows it starts no stop string
    (["one\n", "\ntwo"], ["\n\n"], "one", True),
])
def test_stop_strings_are_never_sent(pieces, stops, sent, stopped):
    matcher, out, hit = StopStrings(stops), [], False
    for piece in pieces:
        text, hit = matcher.push(piece)
        out.append(text)
        if hit:
            break
    out.append(matcher.flush())
    assert "".join(out) == sent and hit == stopped
