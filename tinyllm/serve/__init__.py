"""`tinyllm serve`: one OpenAI-compatible HTTP API in front of llama-server or onnxruntime-genai.

    cli.py            the command: bind, start the engine, run uvicorn, stop cleanly
    models.py         what MODEL is, a checkpoint's cached GGUF export, the engine for it
    app.py            the ASGI app every backend shares: routes, key, body cap, checks, admission
    protocol.py       the OpenAI wire format: request schemas, errors, response bodies
    llama_engine.py   a GGUF on llama-server (a child), requests forwarded, streams passed through
    onnx_engine.py    an ONNX directory on onnxruntime-genai, in this process
    llama_server.py   the llama-server child process (also used by the llama.cpp runtime)
"""

from tinyllm.serve.llama_server import LlamaServer, check_port_free, free_port

__all__ = ["LlamaServer", "check_port_free", "free_port"]
