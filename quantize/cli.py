"""`tinyllm-quantize` (also `tinyllm quantize`): a float32 checkpoint to an int8/int4 one."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tqdm import tqdm

from quantize.quantizer import EMBEDDINGS, METHODS, quantize_checkpoint
from quantize.schemes import GROUP_SIZES
from tinyllm.cli_support import Command


@click.command("quantize", cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scheme", type=click.Choice(["int8", "int4"]))
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Directory to write.")
@click.option("--asym", is_flag=True, help="int4 with a minimum per group (GGML q4_1) instead of q4_0.")
@click.option("--group-size", type=click.Choice([str(g) for g in GROUP_SIZES]), default="32", show_default=True,
              help="Values per scale along each row's input dimension.")
@click.option("--method", type=click.Choice(METHODS), default="rtn", show_default=True,
              help="rtn: round to nearest (GGML's scales); gptq: Hessian-aware rounding on calibration text.")
@click.option("--calib-data", type=click.Path(dir_okay=False), default=None,
              help="UTF-8 text to calibrate on [a slice of the checkpoint's training split].")
@click.option("--calib-tokens", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Calibration tokens for gptq.")
@click.option("--embeddings", type=click.Choice(EMBEDDINGS), default="auto", show_default=True,
              help="Token embedding / output head: auto (llama-quantize's choice: the head in int8), "
                   "same (the chosen scheme), int8, float.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def main(scheme, checkpoint, out, asym, group_size, method, calib_data, calib_tokens, embeddings, force):
    """Quantize the float32 CHECKPOINT directory with SCHEME (int8 = GGML q8_0, int4 = q4_0/q4_1)
    into a quantized checkpoint directory that `tinyllm generate/chat/eval` run directly.

    Example: tinyllm-quantize int4 runs/demo -o runs/demo-int4 --method gptq
    """
    bars: list[tqdm] = []  # opened on the first tensor, so that refused input prints only its error

    def progress(name: str) -> None:
        if not bars:
            bars.append(tqdm(desc=f"{method} {scheme}", unit="tensor", file=sys.stderr, leave=False))
        bars[0].set_postfix_str(name)
        bars[0].update(1)

    try:
        report = quantize_checkpoint(checkpoint, out, scheme, asym, int(group_size), method, calib_data,
                                     calib_tokens, embeddings, force, progress)
    finally:
        for bar in bars:
            bar.close()
    calibrated = report["calibration"]
    click.echo(f"wrote {report['out']}: {report['scheme']} ({report['format']}, group {report['group_size']}), "
               f"{report['method']}, {report['tensors']} tensors in {report['seconds']:.1f}s"
               + (f", calibrated on {calibrated['tokens']:,} tokens of the {calibrated['source']}" if calibrated else ""))

