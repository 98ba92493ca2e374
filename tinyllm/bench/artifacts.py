"""Making the files the bench measures, cached by content in `<out>/artifacts/`.

Each artifact lives in `artifacts/<format>-<key>/` with an `artifact.json` saying what it is and how
long making it took. The key hashes everything the bytes depend on: the float32 checkpoint's files,
the recipe, the artifact it is made from (by its own key), tinyllm's writer code (quantize/ and
export/), the device an ONNX graph is written for and, for llama-quantize and onnxruntime-genai's
model builder, their versions. A second run with the same inputs reuses the
directory; a changed checkpoint or writer makes a new one. Directories are built under a temporary
name and renamed into place, so an interrupted build leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import export
import quantize
from tinyllm.bench.formats import FORMATS, Format
from tinyllm.checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE
from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_directory, atomic_write_text
from tinyllm.llama_cpp import LlamaCpp

RECORD = "artifact.json"
GGUF_FILE = "model.gguf"
_CHUNK = 1 << 20


def _digest_files(paths: list[Path], h: "hashlib._Hash") -> None:
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)


def checkpoint_digest(checkpoint: Path) -> str:
    h = hashlib.sha256()
    _digest_files([checkpoint / CONFIG_FILE, checkpoint / WEIGHTS_FILE, checkpoint / TOKENIZER_FILE], h)
    return h.hexdigest()


def code_digest() -> str:
    """tinyllm's writers: a change to how a format is written must not reuse old files."""
    h = hashlib.sha256()
    for package in (quantize, export):
        root = Path(package.__file__).parent
        _digest_files(sorted(root.glob("*.py")), h)
    return h.hexdigest()


@dataclass
class Artifact:
    format: Format
    path: Path  # what the runtime loads: a directory, or the .gguf file
    build_seconds: float | None
    cached: bool


class Artifacts:
    """Finds or makes the artifact of each format, and the ones it is made from."""

    def __init__(self, checkpoint: Path, out: Path, llama_cpp: LlamaCpp | None, calib_tokens: int,
                 log: Callable[[str], None], device: str = "cpu"):
        self.checkpoint, self.root = checkpoint, out / "artifacts"
        self.device = "cuda" if device.startswith("cuda") else "cpu"  # what the ONNX graphs are written for
        self.llama_cpp, self.calib_tokens, self.log = llama_cpp, calib_tokens, log
        self._base = hashlib.sha256(f"{checkpoint_digest(checkpoint)}:{code_digest()}".encode()).hexdigest()
        self._made: dict[str, Artifact] = {}

    def key(self, fmt: Format) -> str:
        recipe = {"format": fmt.name, "make": fmt.make, "params": fmt.params, "base": self._base,
                  "source": self.key(FORMATS[fmt.source]) if fmt.source else None}
        if fmt.make == "quantize" and fmt.params.get("method") == "gptq":
            recipe["calib_tokens"] = self.calib_tokens
        if fmt.make == "llama-quantize":
            recipe["llama.cpp"] = self.llama_cpp.version() if self.llama_cpp else None
        if fmt.make in ("onnx", "genai-builder"):
            recipe["device"] = self.device
        if fmt.make == "genai-builder":
            recipe["onnxruntime-genai"] = genai_builder_version()
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]

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
        return directory / GGUF_FILE if fmt.make in ("gguf", "llama-quantize") else directory

    def _cached(self, fmt: Format) -> Artifact | None:
        directory = self.root / f"{fmt.name}-{self.key(fmt)}"
        try:
            record = json.loads((directory / RECORD).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return Artifact(fmt, self._target(directory, fmt), record.get("build_seconds"), True)

    def _build(self, fmt: Format) -> Artifact:
        source = self.get(FORMATS[fmt.source]).path if fmt.source else self.checkpoint
        directory = self.root / f"{fmt.name}-{self.key(fmt)}"
        self.log(f"making {fmt.name} ({fmt.what})")
        with atomic_directory(directory, replace=True) as tmp:
            start = time.perf_counter()
            seconds = self._make(fmt, source, self._target(tmp, fmt))
            seconds = time.perf_counter() - start if seconds is None else seconds
            atomic_write_text(tmp / RECORD, json.dumps(
                {"format": fmt.name, "what": fmt.what, "made_from": str(source), "key": self.key(fmt),
                 "build_seconds": seconds, "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                indent=2) + "\n")
        return Artifact(fmt, self._target(directory, fmt), seconds, False)

    def _make(self, fmt: Format, source: Path, target: Path) -> float | None:
        """Write `target`; return the seconds of the work proper when the maker reports them."""
        quiet = lambda _: None  # noqa: E731 - the bench prints its own progress
        if fmt.make == "quantize":
            from quantize.quantizer import quantize_checkpoint

            report = quantize_checkpoint(source, target, fmt.params["scheme"], method=fmt.params["method"],
                                         calib_tokens=self.calib_tokens, force=True)
            return report["seconds"]  # the quantization itself, not reading and writing
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
            exe = self.llama_cpp.tool("llama-quantize")
            proc = subprocess.run([str(exe), str(source), str(target), fmt.params["type"]],
                                  capture_output=True, text=True, errors="replace")
            if proc.returncode != 0:
                tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
                raise TinyLLMError(f"llama-quantize {fmt.params['type']} failed (status {proc.returncode}): {tail}")
        return None


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
        tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
        raise TinyLLMError(f"onnxruntime-genai's model builder failed (status {proc.returncode}): {tail}; "
                           f"its needs: {GENAI_BUILDER_NEEDS}")
