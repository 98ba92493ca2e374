"""`tinyllm-export` (also `tinyllm export`): write a checkpoint out as GGUF or ONNX."""

import click

from export.gguf import gguf_command
from export.onnx import onnx_command
from tinyllm.cli_support import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Export a tinyllm checkpoint to another format (GGUF for llama.cpp, ONNX for onnxruntime)."""


main.add_command(gguf_command)
main.add_command(onnx_command)
