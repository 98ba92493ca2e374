#!/usr/bin/env python3
"""Kept for old instructions: the installer is `tinyllm llama-cpp install` (tinyllm/llama_cpp_install.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable before `pip install -e .`

from tinyllm.llama_cpp_install import llama_cpp_group  # noqa: E402

if __name__ == "__main__":
    llama_cpp_group.main(["install", *sys.argv[1:]], prog_name="tinyllm llama-cpp")
