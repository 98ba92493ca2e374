"""Making the files the bench measures, cached by content in `<out>/artifacts/`.

Each artifact lives in `artifacts/<format>-<key>/` with an `artifact.json` saying what it is and how
long making it took. The key hashes everything the bytes depend on: the float32 checkpoint's files,
the recipe, the artifacts it is made from or sized by (by their own keys: the source, the imatrix,
a `target_bpw_of` row), tinyllm's writer code (quantize/ and export/), the calibration length for
calibrated artifacts, the device an ONNX graph is written for and, for llama.cpp's tools and
onnxruntime-genai's model builder, their versions. A second run with the same inputs reuses the
directory; a changed checkpoint or writer makes a new one. Directories are built under a temporary
name and renamed into place, so an interrupted build leaves nothing that looks finished. Besides the
measured rows it makes two intermediates: `calibration-text` (the GPTQ rows' calibration tokens
written as text, which llama.cpp's tokenizer turns back into the same tokens) and `imatrix`
(llama-imatrix over that text).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import export
import quantize
from tinyllm.bench.formats import Format, lookup, target_of
from tinyllm.checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, checkpoint_digest, digest_files
from tinyllm.config import ModelConfig
from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_directory, atomic_write_text
from tinyllm.llama_cpp import LlamaCpp

RECORD = "artifact.json"
GGUF_FILE = "model.gguf"
# The file each maker writes inside its directory; a directory maker (quantize, onnx) has none.
TARGET_FILES = {"gguf": GGUF_FILE, "llama-quantize": GGUF_FILE, "llama-imatrix": "imatrix.gguf",
                "calibration-text": "calibration.txt"}


def code_digest() -> str:
    """tinyllm's writers: a change to how a format is written must not reuse old files."""
    h = hashlib.sha256()
    for package in (quantize, export):
        root = Path(package.__file__).parent
        digest_files(sorted(root.glob("*.py")), h)
    return h.hexdigest()


def artifact_bytes(fmt: Format, path: Path) -> int:
    """The weight file(s) the runtime loads: safetensors, the ONNX graph and its data, the GGUF."""
    if path.is_file():
        return path.stat().st_size
    if fmt.runtime == "onnxruntime":
        return sum(p.stat().st_size for p in path.iterdir() if p.name.startswith("model.onnx"))
    return (path / WEIGHTS_FILE).stat().st_size


def _tool_failure(tool: str, proc: subprocess.CompletedProcess) -> TinyLLMError:
    tail = " | ".join(proc.stderr.strip().splitlines()[-2:]) or "no output"
    return TinyLLMError(f"{tool} failed (status {proc.returncode}): {tail}")


@dataclass
class Artifact:
    format: Format
    path: Path  # what the runtime loads: a directory, or the .gguf file
    build_seconds: float | None
    cached: bool


class Artifacts:
    """Finds or makes the artifact of each format, and the ones it is made from."""

    def __init__(self, checkpoint: Path, out: Path, llama_cpp: LlamaCpp | None, calib_tokens: int,
                 log: Callable[[str], None], threads: int = 1, device: str = "cpu"):
        self.checkpoint, self.root = checkpoint, out / "artifacts"
        self.device = "cuda" if device.startswith("cuda") else "cpu"  # what the ONNX graphs are written for
        self.llama_cpp, self.calib_tokens, self.log, self.threads = llama_cpp, calib_tokens, log, threads
        self.config = ModelConfig.load(checkpoint / CONFIG_FILE)
        self._base = hashlib.sha256(f"{checkpoint_digest(checkpoint)}:{code_digest()}".encode()).hexdigest()
        self._made: dict[str, Artifact] = {}

    def key(self, fmt: Format) -> str:
        recipe = {"format": fmt.name, "make": fmt.make, "params": fmt.params, "base": self._base,
                  "inputs": {name: self.key(lookup(name)) for name in fmt.inputs}}
        if fmt.make == "calibration-text" or (fmt.make == "quantize" and fmt.params.get("method") == "gptq"):
            recipe["calib_tokens"] = self.calib_tokens
        if fmt.make in ("llama-quantize", "llama-imatrix"):
            recipe["llama.cpp"] = self.llama_cpp.version() if self.llama_cpp else None
        if fmt.make in ("onnx", "genai-builder"):
            recipe["device"] = self.device
        if fmt.make == "genai-builder":
            recipe["onnxruntime-genai"] = genai_builder_version()
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]

    def bits_per_weight(self, artifact: Artifact) -> float:
        """The whole file's bits over the float32 model's parameter count (what the table shows)."""
        return 8 * artifact_bytes(artifact.format, artifact.path) / self.config.num_params()

    def target_bpw(self, fmt: Format) -> float | None:
        """The bits per weight `fmt` is made to match (see formats.target_of); makes that row's artifact."""
        name = target_of(fmt)
        return None if name is None else self.bits_per_weight(self.get(lookup(name)))

    def get(self, fmt: Format) -> Artifact:
        if fmt.name in self._made:
            return self._made[fmt.name]
        if fmt.make == "checkpoint":
            artifact = Artifact(fmt, self.checkpoint, None, False)  # nothing to make
        else:
            artifact = self._cached(fmt) or self._build(fmt)
        self._made[fmt.name] = artifact
        return artifact

    def _target(self, directory: Path, fmt: Format) -> Path:
        return directory / TARGET_FILES[fmt.make] if fmt.make in TARGET_FILES else directory

    def _cached(self, fmt: Format) -> Artifact | None:
        directory = self.root / f"{fmt.name}-{self.key(fmt)}"
        try:
            record = json.loads((directory / RECORD).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return Artifact(fmt, self._target(directory, fmt), record.get("build_seconds"), True)

    def _build(self, fmt: Format) -> Artifact:
        source = self.get(lookup(fmt.source)).path if fmt.source else self.checkpoint
        target_bpw = self.target_bpw(fmt)
        directory = self.root / f"{fmt.name}-{self.key(fmt)}"
        self.log(f"making {fmt.name} ({fmt.what})")
        with atomic_directory(directory, replace=True) as tmp:
            start = time.perf_counter()
            seconds, record = self._make(fmt, source, self._target(tmp, fmt), target_bpw)
            seconds = time.perf_counter() - start if seconds is None else seconds
            if target_bpw is not None:
                record.update(target_bpw=target_bpw, target_of=target_of(fmt))
            atomic_write_text(tmp / RECORD, json.dumps(
                {"format": fmt.name, "what": fmt.what, "made_from": str(source), "key": self.key(fmt),
                 "build_seconds": seconds, "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 **record}, indent=2) + "\n")
        return Artifact(fmt, self._target(directory, fmt), seconds, False)

    def _make(self, fmt: Format, source: Path, target: Path, target_bpw: float | None) -> tuple[float | None, dict]:
        """Write `target`; return the seconds of the work proper when the maker reports them, and
        what else the record should say."""
        quiet = lambda _: None  # noqa: E731 - the bench prints its own progress
        if fmt.make == "quantize":
            from quantize.quantizer import quantize_checkpoint

            sized = {} if target_bpw is None or not fmt.params.get("target_bpw_of") else {"target_bpw": target_bpw}
            if fmt.params["scheme"] == "auto":
                sized["sensitivity_from"] = self._sensitivity(fmt)
            report = quantize_checkpoint(source, target, fmt.params["scheme"], method=fmt.params["method"],
                                         calib_tokens=self.calib_tokens, force=True, **sized)
            return report["seconds"], {}  # the quantization itself, not reading and writing
        if fmt.make == "calibration-text":
            return None, self._calibration_text(target)
        if fmt.make == "llama-imatrix":
            return None, self._imatrix(source, target)
        if fmt.make == "onnx-dynamic":
            return None, self._dynamic_int8(source, target)
        if fmt.make == "onnx":
            from export.onnx import export_onnx

            export_onnx(source, target, force=True, log=quiet, accuracy_level=fmt.params.get("accuracy_level"),
                        device=self.device)
        elif fmt.make == "genai-builder":
            run_genai_builder(source, target, fmt.params["precision"], self.device)
        elif fmt.make == "gguf":
            from export.gguf import export_gguf

            export_gguf(source, target, fmt.params.get("type"), force=True, log=quiet, progress=False)
        elif fmt.make == "llama-quantize":
            imatrix = ["--imatrix", str(self.get(lookup("imatrix")).path)] if fmt.imatrix else []
            argv = [str(self.llama_cpp.tool("llama-quantize")), *imatrix, str(source), str(target),
                    fmt.params["type"], str(self.threads)]
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace")
            if proc.returncode != 0:
                raise _tool_failure(f"llama-quantize {fmt.params['type']}", proc)
        return None, {}

    @staticmethod
    def _dynamic_int8(source: Path, target: Path) -> dict:
        """onnxruntime's quantize_dynamic of the float32 ONNX directory `source`, written to `target`,
        its config.json's export record saying so (the runtime names the row's kernels from it)."""
        from export.onnx_quant import quantize_dynamic_int8
        from tinyllm.runtime.onnx_runtime import EXPORT_RECORD, MODEL_FILE

        for path in source.iterdir():
            if path.name != RECORD:
                shutil.copy2(path, target / path.name)
        settings = quantize_dynamic_int8(target / MODEL_FILE)
        config = json.loads((target / CONFIG_FILE).read_text(encoding="utf-8"))
        record = config["tinyllm"][EXPORT_RECORD]
        record.pop("validation", None)  # the float32 graph's, not this one's
        record.update(quant="int8-dynamic", **{"int8-dynamic": {
            "ops": "onnxruntime dynamic INT8 (DynamicQuantizeLinear + MatMulInteger)", **settings}})
        atomic_write_text(target / CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return {"quantize_dynamic": settings}

    def _sensitivity(self, fmt: Format) -> Path | None:
        """An auto row already made this run by the same method: its per-tensor divergences plan
        this size too (they depend on the model, method and calibration text, not on the size)."""
        for made in self._made.values():
            if made.format.make == "quantize" and made.format.params.get("scheme") == "auto" \
                    and made.format.params.get("method") == fmt.params["method"]:
                return made.path
        return None

    def _calibration_text(self, target: Path) -> dict:
        """The GPTQ rows' calibration tokens as text that tokenizes back to them (checked here)."""
        from quantize.quantizer import calibration_tokens
        from tinyllm.dataset import DataSpec
        from tinyllm.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(self.checkpoint / TOKENIZER_FILE)
        data = self.config.extra.get("data")
        ids, calibration = calibration_tokens(tokenizer, DataSpec.from_dict(data) if data else None, None,
                                              self.calib_tokens, self.config.max_seq_len)
        ids = ids.flatten().tolist()
        text = tokenizer.decode(ids)
        back = tokenizer.encode(text, parse_special=True)
        same = next((i for i, (a, b) in enumerate(zip(ids, back)) if a != b), min(len(ids), len(back)))
        atomic_write_text(target, text)
        # The stream is cut at a token count, so its last word can tokenize otherwise on its own.
        return {"calibration": calibration, "tokens": len(ids), "retokenized_tokens": len(back),
                "same_tokens_prefix": same}

    def _imatrix(self, gguf: Path, target: Path) -> dict:
        """llama-imatrix over the calibration text, in chunks of the context the GPTQ rows calibrate on."""
        text = self.get(lookup("calibration-text")).path
        n_ctx = self.config.max_seq_len
        argv = [str(self.llama_cpp.tool("llama-imatrix")), "-m", str(gguf), "-f", str(text), "--parse-special",
                "-c", str(n_ctx), "--no-ppl", "-t", str(self.threads), "-ngl", "0", "-o", str(target)]
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace")
        if proc.returncode != 0 or not target.is_file():
            raise _tool_failure("llama-imatrix", proc)
        return {"command": " ".join(["llama-imatrix", *argv[1:-1], target.name]), "n_ctx": n_ctx}


GENAI_BUILDER_NEEDS = "pip install 'tinyllm[genai-builder]' (onnx-ir, transformers>=5.24)"


def genai_builder_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError:
        return None


def run_genai_builder(checkpoint: Path, target: Path, precision: str, device: str) -> None:
    """onnxruntime-genai's own model builder on the float32 checkpoint, as a user runs it."""
    import importlib.util

    missing = [m for m in ("onnxruntime_genai", "onnx_ir", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise TinyLLMError(f"onnxruntime-genai's model builder needs {', '.join(missing)}: {GENAI_BUILDER_NEEDS}")
    with tempfile.TemporaryDirectory(prefix="genai-builder-") as cache:
        proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint),
                               "-o", str(target), "-p", precision, "-e", device, "-c", cache],
                              capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise TinyLLMError(f"{_tool_failure('onnxruntime-genai model builder', proc)}; its needs: {GENAI_BUILDER_NEEDS}")
