"""The onnxruntime backend of the runtime interface, for directories written by `tinyllm-export onnx`.

One session runs prefill and decode alike: `forward` binds the new ids, their positions and the
cache from the previous call, and keeps the `present.*` outputs as OrtValues that the next call
binds as `past_key_values.*` unchanged (I/O binding, no NumPy round trip for the cache). The
input/output names come from the directory's genai_config.json. Sampling, generation and
perplexity are the base class's, shared with every other backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from tinyllm.checkpoint import CONFIG_FILE, TOKENIZER_FILE
from tinyllm.config import ModelConfig
from tinyllm.errors import TinyLLMError
from tinyllm.runtime.base import Runtime
from tinyllm.tokenizer import Tokenizer

MODEL_FILE = "model.onnx"
GENAI_CONFIG_FILE = "genai_config.json"


def read_genai_config(path: Path) -> dict:
    try:
        return json.loads((path / GENAI_CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TinyLLMError(f"{path}: no {GENAI_CONFIG_FILE}; re-export with `tinyllm-export onnx`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyLLMError(f"{path / GENAI_CONFIG_FILE}: not valid JSON ({e}); re-export the model") from None


def providers_for(device: str) -> tuple[list, str, int]:
    """onnxruntime execution providers for `--device`, and where the cache lives (type, index)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"], "cpu", 0
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise TinyLLMError(f"--device {device}: expected auto, cpu or cuda[:N]")
    if "CUDAExecutionProvider" not in available:
        raise TinyLLMError(f"--device {device}: onnxruntime {ort.__version__} has no CUDA execution provider "
                           f"(it has {', '.join(available)}); install onnxruntime-gpu in place of "
                           "onnxruntime, or use --device cpu")
    index = int(index or 0)
    # Nodes CUDA lacks kernels for (INT8 MatMulInteger among them) fall back to the CPU provider.
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], "cuda", index


class OnnxRuntime(Runtime):
    def __init__(self, session, tokenizer: Tokenizer, config: ModelConfig, genai: dict, device: tuple[str, int],
                 threads: int):
        self.session = session
        self.tokenizer = tokenizer
        self.n_ctx = config.max_seq_len
        self.metadata = config.extra
        self.quant = genai.get("tinyllm", {}).get("quant", "none")
        self.name = f"onnxruntime-{'f32' if self.quant == 'none' else self.quant}"
        self.device, self.threads = device, threads
        inputs, outputs = genai["model"]["decoder"]["inputs"], genai["model"]["decoder"]["outputs"]
        layers = range(config.n_layers)
        self.input_ids, self.position_ids = inputs["input_ids"], inputs["position_ids"]
        self.past_names = [p % i for i in layers for p in (inputs["past_key_names"], inputs["past_value_names"])]
        self.output_names = [outputs["logits"]] + [p % i for i in layers for p in
                                                   (outputs["present_key_names"], outputs["present_value_names"])]
        self.empty_past = np.zeros((1, config.n_kv_heads, 0, config.head_dim), np.float32)
        self.reset()

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None) -> "OnnxRuntime":
        import onnxruntime as ort

        path = Path(path)
        missing = [f for f in (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, GENAI_CONFIG_FILE) if not (path / f).is_file()]
        if missing:
            raise TinyLLMError(f"{path}: not a complete ONNX model directory, missing {', '.join(missing)}; "
                               "re-export with `tinyllm-export onnx`")
        if threads is not None and threads <= 0:
            raise TinyLLMError(f"--threads {threads}: must be positive")
        providers, device_type, device_id = providers_for(device)
        config = ModelConfig.load(path / CONFIG_FILE)
        genai = read_genai_config(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default, one per physical core
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise here
        try:
            session = ort.InferenceSession(str(path / MODEL_FILE), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for a damaged graph
            raise TinyLLMError(f"{path / MODEL_FILE}: onnxruntime cannot load it ({str(e).splitlines()[0]}); "
                               "re-export the model") from None
        tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
        try:
            return cls(session, tokenizer, config, genai, (device_type, device_id), threads or 0)
        except (KeyError, TypeError) as e:
            raise TinyLLMError(f"{path / GENAI_CONFIG_FILE}: lacks the graph's input/output names ({e}); "
                               "re-export the model") from None

    def reset(self) -> None:
        import onnxruntime as ort

        self.length = 0
        empty = ort.OrtValue.ortvalue_from_numpy(self.empty_past, *self.device)
        self.past = [empty] * len(self.past_names)

    @property
    def cache_length(self) -> int:
        return self.length

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        n = len(ids)
        if self.length + n > self.n_ctx:
            raise ValueError(f"{self.length + n} positions exceed the context of {self.n_ctx}")
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_ids, np.asarray(ids, dtype=np.int64).reshape(1, n))
        binding.bind_cpu_input(self.position_ids, np.arange(self.length, self.length + n, dtype=np.int64)[None])
        for name, value in zip(self.past_names, self.past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.output_names[0], "cpu")
        for name in self.output_names[1:]:
            binding.bind_output(name, *self.device)  # the cache stays where the provider computes
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        self.past = outputs[1:]
        self.length += n
        return outputs[0].numpy()[0]

    def describe(self) -> str:
        provider = self.session.get_providers()[0]
        threads = self.threads or "default"
        kernels = {"none": "float32 MatMul", "int8": "dynamic INT8 MatMulInteger",
                   "int4": "INT4 MatMulNBits"}.get(self.quant, self.quant)
        return f"{self.name} on {provider} ({threads} intra-op threads, {kernels})"
