"""The onnxruntime backend of the runtime interface, for ONNX model directories.

It runs any directory that onnxruntime-genai runs: tinyllm's fused and plain graphs
(`tinyllm-export onnx`) and what onnxruntime-genai's own model builder writes. Everything it
needs comes from genai_config.json, as onnxruntime-genai reads it: the graph's input and output
names, layers, key/value heads, head size, context length, and whether past and present share
one buffer. The key/value dtype comes from the graph itself (float16 in the builder's CUDA graphs).

One session runs prefill and decode alike, through I/O binding: the cache never makes a NumPy
round trip. With a shared buffer (GroupQueryAttention graphs) each layer's keys and values live
in one preallocated [1, kv_heads, context, head_size] OrtValue bound as both the past input and
the present output, which the kernel appends to in place; the attention mask's length tells it
how much is filled. Otherwise (the plain graph) the `present.*` outputs of one call are bound as
the next call's past. Sampling, generation and perplexity are the base class's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from tinyllm.checkpoint import CONFIG_FILE, TOKENIZER_FILE
from tinyllm.errors import TinyLLMError
from tinyllm.runtime.base import Runtime
from tinyllm.tokenizer import Tokenizer

MODEL_FILE = "model.onnx"
GENAI_CONFIG_FILE = "genai_config.json"
EXPORT_RECORD = "onnx"  # the key of tinyllm's export record in config.json's `tinyllm` section
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TinyLLMError(f"{path.parent}: no {path.name}; {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyLLMError(f"{path}: not valid JSON ({e}); re-export the model") from None


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
    # Nodes CUDA lacks kernels for fall back to the CPU provider.
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], "cuda", index


class OnnxRuntime(Runtime):
    def __init__(self, session, tokenizer: Tokenizer, genai: dict, metadata: dict, device: tuple[str, int],
                 threads: int):
        model, decoder = genai["model"], genai["model"]["decoder"]
        inputs, outputs = decoder["inputs"], decoder["outputs"]
        self.session, self.tokenizer, self.device, self.threads = session, tokenizer, device, threads
        self.n_ctx = int(model["context_length"])
        self.metadata = metadata
        self.record = metadata.get(EXPORT_RECORD, {})
        quant = self.record.get("quant")
        self.name = "onnxruntime" if quant is None else f"onnxruntime-{'f32' if quant == 'none' else quant}"
        layers = range(int(decoder["num_hidden_layers"]))
        self.input_ids, self.attention_mask = inputs["input_ids"], inputs.get("attention_mask")
        self.position_ids = inputs.get("position_ids")
        self.past_names = [p % i for i in layers for p in (inputs["past_key_names"], inputs["past_value_names"])]
        self.logits_name = outputs["logits"]
        self.present_names = [p % i for i in layers for p in (outputs["present_key_names"],
                                                              outputs["present_value_names"])]
        self.shared_buffer = bool(genai.get("search", {}).get("past_present_share_buffer", False))
        kv_type = {i.name: i.type for i in session.get_inputs()}[self.past_names[0]]
        if kv_type not in _NUMPY_TYPES:
            raise TinyLLMError(f"the graph's key/value cache is {kv_type}; tinyllm runs float32 and float16 caches")
        self.kv_shape = (1, int(decoder["num_key_value_heads"]), int(decoder["head_size"]))
        self.kv_dtype = _NUMPY_TYPES[kv_type]
        self.buffers = None
        self.reset()

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None) -> "OnnxRuntime":
        import onnxruntime as ort

        path = Path(path)
        genai = read_json(path / GENAI_CONFIG_FILE, "export it with `tinyllm-export onnx`")
        try:
            filename = genai["model"]["decoder"]["filename"]
        except (KeyError, TypeError):
            raise TinyLLMError(f"{path / GENAI_CONFIG_FILE}: names no decoder file; re-export the model") from None
        missing = [f for f in (filename, TOKENIZER_FILE) if not (path / f).is_file()]
        if missing:
            raise TinyLLMError(f"{path}: not a complete ONNX model directory, missing {', '.join(missing)}; "
                               "re-export with `tinyllm-export onnx`")
        if threads is not None and threads <= 0:
            raise TinyLLMError(f"--threads {threads}: must be positive")
        providers, device_type, device_id = providers_for(device)
        # tinyllm's own exports carry their record (and the training-data record) in config.json;
        # a directory from onnxruntime-genai's builder has no config.json.
        metadata = read_json(path / CONFIG_FILE, "").get("tinyllm", {}) if (path / CONFIG_FILE).is_file() else {}
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default, one per physical core
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise here
        try:
            session = ort.InferenceSession(str(path / filename), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for a damaged graph
            raise TinyLLMError(f"{path / filename}: onnxruntime cannot load it ({str(e).splitlines()[0]}); "
                               "re-export the model") from None
        tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
        try:
            return cls(session, tokenizer, genai, metadata, (device_type, device_id), threads or 0)
        except (KeyError, TypeError, ValueError) as e:
            raise TinyLLMError(f"{path / GENAI_CONFIG_FILE}: lacks the graph's input/output names or sizes ({e}); "
                               "re-export the model") from None

    def reset(self) -> None:
        import onnxruntime as ort

        self.length = 0
        heads, head_size = self.kv_shape[1], self.kv_shape[2]
        if not self.shared_buffer:
            empty = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, 0, head_size), self.kv_dtype), *self.device)
            self.past = [empty] * len(self.past_names)
        elif self.buffers is None:  # the kernel reads only the filled positions: nothing to clear on reset
            # One array each: an OrtValue on the CPU wraps the NumPy memory, it does not copy it.
            self.arrays = [np.zeros((1, heads, self.n_ctx, head_size), self.kv_dtype) for _ in self.past_names]
            self.buffers = [ort.OrtValue.ortvalue_from_numpy(a, *self.device) for a in self.arrays]
            # The buffers stay bound, as past and present both, from call to call; logits first.
            self.binding = self.session.io_binding()
            self.binding.bind_output(self.logits_name, "cpu")
            for past, present, value in zip(self.past_names, self.present_names, self.buffers):
                self.binding.bind_ortvalue_input(past, value)
                self.binding.bind_ortvalue_output(present, value)

    @property
    def cache_length(self) -> int:
        return self.length

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        n = len(ids)
        if self.length + n > self.n_ctx:
            raise ValueError(f"{self.length + n} positions exceed the context of {self.n_ctx}")
        if self.shared_buffer:
            binding = self.binding
            binding.bind_output(self.logits_name, "cpu")  # unallocated again: its length changes per call
        else:
            binding = self.session.io_binding()
            binding.bind_output(self.logits_name, "cpu")  # first: outputs()[0]
            for past, present, value in zip(self.past_names, self.present_names, self.past):
                binding.bind_ortvalue_input(past, value)
                binding.bind_output(present, *self.device)  # the cache stays where the provider computes
        binding.bind_cpu_input(self.input_ids, np.asarray(ids, dtype=np.int64).reshape(1, n))
        if self.attention_mask:
            binding.bind_cpu_input(self.attention_mask, np.ones((1, self.length + n), np.int64))
        if self.position_ids:
            binding.bind_cpu_input(self.position_ids, np.arange(self.length, self.length + n, dtype=np.int64)[None])
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if not self.shared_buffer:
            self.past = outputs[1:]
        self.length += n
        return outputs[0].numpy()[0].astype(np.float32, copy=False)

    def describe(self) -> str:
        provider = self.session.get_providers()[0]
        threads = self.threads or "default"
        if not self.record:
            return f"{self.name} on {provider} ({threads} intra-op threads, a graph tinyllm did not write)"
        quant = self.record.get("quant")
        how = self.record.get("quantized_checkpoint") or self.record.get(quant) or {}
        kernels = (f"MatMulNBits at accuracy level {how['accuracy_level']}" if "accuracy_level" in how
                   else how.get("ops", "float32 MatMul"))
        return f"{self.name} on {provider} ({threads} intra-op threads, {self.record.get('graph')} graph, {kernels})"
