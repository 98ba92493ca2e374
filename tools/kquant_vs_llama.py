"""tinyllm's calibrated K-quants and `auto` sizes against llama.cpp + imatrix, by llama.cpp's own KLD.

For one float32 checkpoint, every figure comes from llama.cpp's tools on GGUF files:
  reference  the checkpoint exported as F32; `llama-perplexity --kl-divergence-base` on TEXT
  llama.cpp  `llama-imatrix` on CALIB, then `llama-quantize --imatrix` at Q2_K, Q3_K_M, Q4_K_M,
             Q5_K_M and Q6_K
  tinyllm    `tinyllm-quantize q2_k … q6_k --method gptq` on the same CALIB, exported (blocks
             copied), and `tinyllm-quantize auto --target-bpw B` for B = each llama.cpp file's bpw
             (one sensitivity measurement, reused for every size)
and each file's mean KLD / PPL / top-1 against the F32 reference from `llama-perplexity
--kl-divergence` on TEXT. bpw = file bits / parameters. The goal line: for every llama.cpp point,
a tinyllm file no larger with mean KLD at most half of its. Every artifact is kept in --out and
reused when it exists (delete it to redo a step).

    .venv/bin/python tools/kquant_vs_llama.py /work/models/realtext-demo --text /work/models/austen/heldout.txt \\
        --out runs/kq-realtext
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent)]

from export.gguf import export_gguf  # noqa: E402
from quantize.quantizer import quantize_checkpoint  # noqa: E402
from tinyllm.bench.llama_rows import kl_divergence  # noqa: E402
from tinyllm.config import ModelConfig  # noqa: E402
from tinyllm.dataset import DataSpec, load_splits  # noqa: E402
from tinyllm.evaluate import plain_text  # noqa: E402
from tinyllm.llama_cpp import find_llama_cpp  # noqa: E402

LLAMA_TYPES = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K")
OURS = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")


def run(argv: list) -> None:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if done.returncode:
        raise click.ClickException(f"{Path(str(argv[0])).name} failed: {done.stderr.strip()[-600:]}")


def split_text(checkpoint: Path, split: int) -> str:
    spec = DataSpec.from_dict(ModelConfig.load(checkpoint / "config.json").extra["data"])
    return plain_text(load_splits(spec)[split])


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for every artifact.")
@click.option("--text", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Text the KLD is measured on [the checkpoint's validation split].")
@click.option("--calib", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Calibration text for both tools [the first --calib-chars of the training split].")
@click.option("--calib-chars", default=200_000, show_default=True)
@click.option("--calib-tokens", default=65536, show_default=True, help="tinyllm's --calib-tokens.")
@click.option("--ctx", default=256, show_default=True, help="n_ctx of every llama.cpp run.")
@click.option("--threads", default=2, show_default=True)
@click.option("--method", type=click.Choice(["gptq", "rtn"]), default="gptq", show_default=True)
def main(checkpoint, out, text, calib, calib_chars, calib_tokens, ctx, threads, method):
    out.mkdir(parents=True, exist_ok=True)
    llama = find_llama_cpp()
    if calib is None:
        calib = out / "calib.txt"
        if not calib.exists():
            calib.write_text(split_text(checkpoint, 0)[:calib_chars], encoding="utf-8")
    if text is None:
        text = out / "text.txt"
        if not text.exists():
            text.write_text(split_text(checkpoint, 1), encoding="utf-8")
    n_params = ModelConfig.load(checkpoint / "config.json").num_params()
    f32, base, imatrix = out / "f32.gguf", out / "base.kld", out / "imatrix.gguf"
    if not f32.exists():
        export_gguf(checkpoint, f32, "f32", log=lambda _: None, progress=False)
    if not base.exists():
        run([llama.tool("llama-perplexity"), "-m", f32, "-f", text, "-c", ctx, "-t", threads,
             "--kl-divergence-base", base])
    if not imatrix.exists():
        run([llama.tool("llama-imatrix"), "-m", f32, "-f", calib, "-c", ctx, "-t", threads, "-o", imatrix])
    files: dict[str, Path] = {}
    for t in LLAMA_TYPES:
        files[f"llama.cpp {t} + imatrix"] = path = out / f"llama-{t}.gguf"
        if not path.exists():
            run([llama.tool("llama-quantize"), "--imatrix", imatrix, f32, path, t, threads])

    def ours(name: str, scheme: str, **options) -> None:
        directory = out / name
        if not directory.exists():
            report = quantize_checkpoint(checkpoint, directory, scheme, method=method, calib_data=str(calib),
                                         calib_tokens=calib_tokens, **options)
            click.echo(f"{name}: {report['seconds']:.0f} s", err=True)
        files[f"tinyllm {name}"] = gguf = out / f"{name}.gguf"
        if not gguf.exists():
            export_gguf(directory, gguf, log=lambda _: None, progress=False)

    for scheme in OURS:
        ours(f"{scheme}-{method}", scheme)
    measured = None
    for t in LLAMA_TYPES:
        bpw = 8 * (out / f"llama-{t}.gguf").stat().st_size / n_params
        name = f"auto-{bpw:.2f}-{method}"
        ours(name, "auto", target_bpw=round(bpw, 3), sensitivity_from=measured)
        measured = measured or out / name
    rows = []
    for label, path in files.items():
        cache = path.with_suffix(".kld.json")
        if not cache.exists():
            figures = kl_divergence(llama, path, base, ctx, threads, 0)
            cache.write_text(json.dumps(figures))
        figures = json.loads(cache.read_text())
        rows.append({"file": label, "bpw": 8 * path.stat().st_size / n_params, **figures})
    rows.sort(key=lambda r: r["bpw"])
    lines = ["| file | bpw | mean KLD | PPL | top-1 |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['file']} | {r['bpw']:.3f} | {r['kld_mean']:.5f} | {r['ppl']:.3f} | "
              f"{100 * r['top1_agreement']:.2f}% |" for r in rows]
    lines += ["", "| llama.cpp point | bpw | KLD | best tinyllm file no larger | its KLD | ratio | goal (<= 0.5) |",
              "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
    reached = 0
    for ref in (r for r in rows if r["file"].startswith("llama.cpp")):
        mine = [r for r in rows if r["file"].startswith("tinyllm") and r["bpw"] <= ref["bpw"]]
        best = min(mine, key=lambda r: r["kld_mean"], default=None)
        ratio = best["kld_mean"] / ref["kld_mean"] if best else float("inf")
        reached += ratio <= 0.5
        lines.append(f"| {ref['file']} | {ref['bpw']:.3f} | {ref['kld_mean']:.5f} | "
                     f"{best['file'] if best else '—'} | {best['kld_mean'] if best else float('nan'):.5f} | "
                     f"{ratio:.2f} | {'reached' if ratio <= 0.5 else 'NOT reached'} |")
    lines.append(f"\n{reached} of {len(LLAMA_TYPES)} goal points reached.")
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
