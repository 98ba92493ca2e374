"""tinyllm as a user gets it: `pip wheel` of the project, installed into a fresh venv, run outside the checkout.

The fresh venv gets the wheel itself installed anew; its dependencies (torch and the rest, GBs to
download) come from the project venv's site-packages through a .pth line, which puts that directory
on sys.path without running the .pth files in it (so the project's editable install is not seen).
From a scratch directory, the installed commands train, quantize, export to GGUF and ONNX, find
llama.cpp's tools (`tinyllm llama-cpp install`), and serve the quantized checkpoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import require
from test_serve import Served

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("tinyllm", "quantize", "export")  # pyproject's [tool.setuptools.packages.find]


def run(argv: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, (f"{' '.join(argv)} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """The bin/ directory of a fresh venv holding tinyllm's wheel."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what the sdist holds: setuptools writes build/ and *.egg-info beside the source.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(root / "dist"), str(source)], cwd=root)
    (wheel,) = (root / "dist").glob("tinyllm-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], cwd=root)
    python = root / "venv" / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    fresh = Path(run([str(python), "-c", purelib], cwd=root).strip())
    (fresh / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)], cwd=root)
    return python.parent


def test_the_installed_wheel_trains_quantizes_exports_and_serves(venv, llama_cpp, tmp_path):
    work = tmp_path / "scratch"  # nowhere near the checkout: nothing can be imported from it by accident
    work.mkdir()
    where = run([str(venv / "python"), "-c", "import tinyllm, export, quantize; "
                 "print(tinyllm.__file__, export.__file__, quantize.__file__)"], cwd=work)
    assert all(path.startswith(str(venv.parent)) for path in where.split()), where

    tinyllm = str(venv / "tinyllm")
    run([tinyllm, "train", "--preset", "test", "--steps", "10", "--corpus-size", "100000", "--device", "cpu",
         "--out", "ckpt", "--quiet"], cwd=work)
    run([tinyllm, "quantize", "int8", "ckpt", "-o", "ckpt-int8"], cwd=work)
    run([tinyllm, "export", "gguf", "ckpt-int8", "-o", "model.gguf"], cwd=work)
    run([tinyllm, "export", "onnx", "ckpt", "-o", "onnx"], cwd=work)
    assert (work / "model.gguf").stat().st_size > 0 and (work / "onnx" / "model.onnx").is_file()
    assert "llama.cpp tools" in run([tinyllm, "llama-cpp", "install"], cwd=work)

    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    if llama_cpp.bin_dir is not None:
        env["TINYLLM_LLAMA_CPP"] = str(llama_cpp.bin_dir)
    server = Served(work / "ckpt-int8", tmp_path, env=env, tinyllm=(tinyllm,), cwd=work)
    try:
        assert "q8_0 blocks copied" in server.output()
        openai = require("openai", 'pip install -e ".[test]"')
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        chat = client.chat.completions.create(model="ckpt-int8", messages=[{"role": "user", "content": "Hello"}],
                                              max_tokens=8)
        assert isinstance(chat.choices[0].message.content, str) and chat.usage.completion_tokens <= 8
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.output()
