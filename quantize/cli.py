"""`tinyllm-quantize` (also `tinyllm quantize`): a float32 checkpoint to a quantized one."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tqdm import tqdm

from quantize.quantizer import EMBEDDINGS, METHODS, quantize_checkpoint
from quantize.schemes import GROUP_SIZES, SCHEME_NAMES
from tinyllm.cli_support import Command


@click.command("quantize", cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scheme", type=click.Choice([*SCHEME_NAMES, "auto"]))
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Directory to write.")
@click.option("--target-bpw", type=click.FloatRange(min=0, min_open=True), default=None,
              help="auto: the size to reach, in bits per weight of the GGUF file the checkpoint exports to "
                   "(file bits / parameters, as llama-quantize's sizes are given).")
@click.option("--sensitivity-from", type=click.Path(path_type=Path), default=None,
              help="auto: reuse the per-tensor divergences an earlier auto checkpoint of the same model, "
                   "method and calibration text measured (plan another size without measuring again).")
@click.option("--asym", is_flag=True, help="int4 with a minimum per group (GGML q4_1) instead of q4_0.")
@click.option("--group-size", type=click.Choice([str(g) for g in GROUP_SIZES]), default="32", show_default=True,
              help="int8/int4: values per scale along each row's input dimension.")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="rtn: round to nearest (GGML's reference quantizers); gptq: Hessian-aware rounding and "
                   "activation-weighted scales on calibration text.  [default: rtn; gptq for auto]")
@click.option("--calib-data", type=click.Path(dir_okay=False), default=None,
              help="UTF-8 text to calibrate on [a slice of the checkpoint's training split].")
@click.option("--calib-tokens", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Calibration tokens for gptq (and for auto's sensitivity measurements).")
@click.option("--embeddings", type=click.Choice(EMBEDDINGS), default="auto", show_default=True,
              help="Token embedding / output head: auto (the head keeps more bits: q6_k under q2_k…q5_k as "
                   "llama-quantize does, q8_0 where its rows do not split into 256 and under int8/int4, "
                   "which then export to ONNX unchanged), same (the chosen scheme), int8, float. "
                   "Not for SCHEME auto, which picks them too.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def main(scheme, checkpoint, out, target_bpw, sensitivity_from, asym, group_size, method, calib_data, calib_tokens,
         embeddings, force):
    """Quantize the float32 CHECKPOINT directory with SCHEME into a quantized checkpoint directory
    that `tinyllm generate/chat/eval` run directly and `tinyllm-export gguf` copies verbatim.

    SCHEME: int8 (GGML q8_0), int4 (q4_0, --asym q4_1), q2_k … q6_k (GGML's K-quant super-blocks),
    or auto: every tensor's type (q2_k … q6_k, q8_0, q4_0, q4_1, f16) picked by its measured effect
    on the calibration text, for the smallest KL divergence at --target-bpw.

    Examples: tinyllm-quantize q4_k runs/demo -o runs/demo-q4k --method gptq;
    tinyllm-quantize auto runs/demo -o runs/demo-5bpw --target-bpw 5.0
    """
    bars: list[tqdm] = []  # opened on the first step, so that refused input prints only its error

    def progress(name: str) -> None:
        if not bars:
            bars.append(tqdm(desc=f"{scheme}", unit="step", file=sys.stderr, leave=False))
        bars[0].set_postfix_str(name)
        bars[0].update(1)

    try:
        report = quantize_checkpoint(checkpoint, out, scheme, asym, int(group_size), method, calib_data,
                                     calib_tokens, embeddings, force, progress, target_bpw=target_bpw,
                                     sensitivity_from=sensitivity_from)
    finally:
        for bar in bars:
            bar.close()
    calibrated = report["calibration"]
    layout = f"group {report['group_size']}" if report["format"] in ("q8_0", "q4_0", "q4_1") else "GGML blocks"
    if "target_bpw" in report:
        layout = f"{report['target_bpw']} bpw asked, {report['bpw']:.3f} planned ({report['type_counts']})"
    click.echo(f"wrote {report['out']}: {report['scheme']} ({report['format']}, {layout}), "
               f"{report['method']}, {report['tensors']} tensors in {report['seconds']:.1f}s"
               + (f", calibrated on {calibrated['tokens']:,} tokens of the {calibrated['source']}" if calibrated else ""))
