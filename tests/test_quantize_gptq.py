"""Calibrated quantization on a trained model: int8 keeps validation perplexity within +0.5% of
float32, and GPTQ int4 beats round-to-nearest int4 on KL divergence to float32 (the benchmark shows
the same on the demo model; perplexity cannot tell the two apart on this easy text)."""

from __future__ import annotations

import json

import pytest

from conftest import mean_kld, validation_chunks
from quantize.checkpoint import load_quantized
from quantize.quantizer import quantize_checkpoint
from tinyllm.checkpoint import load_checkpoint
from tinyllm.evaluate import evaluate
from tinyllm.runtime import load_runtime


def validation_ppl(path) -> float:
    return evaluate(load_runtime(path), "validation", progress=False)["ppl"]


@pytest.fixture(scope="module")
def ppl(trained_checkpoint, tmp_path_factory):
    """Validation perplexity of the float32 model and of its int8 / int4-rtn / int4-gptq versions."""
    work = tmp_path_factory.mktemp("gptq")
    out = {"float32": validation_ppl(trained_checkpoint)}
    for name, scheme, method in (("int8", "int8", "rtn"), ("int4-rtn", "int4", "rtn"), ("int4-gptq", "int4", "gptq")):
        quantize_checkpoint(trained_checkpoint, work / name, scheme, method=method, calib_tokens=4096)
        out[name] = validation_ppl(work / name)
    out["gptq_config"] = json.loads((work / "int4-gptq" / "config.json").read_text())["quantization_config"]
    reference, ids = load_checkpoint(trained_checkpoint)[0], validation_chunks(trained_checkpoint)
    for name in ("int4-rtn", "int4-gptq"):
        out[f"{name} kld"] = mean_kld(reference, load_quantized(work / name)[0], ids)
    return out


def test_int8_stays_within_half_a_percent_of_float32(ppl):
    assert ppl["int8"] <= ppl["float32"] * 1.005, ppl


def test_gptq_int4_beats_rtn_int4(ppl):
    assert ppl["int4-gptq kld"] < ppl["int4-rtn kld"], ppl


def test_gptq_records_its_calibration_source(ppl):
    calibration = ppl["gptq_config"]["calibration"]
    assert calibration["source"] == "training split" and calibration["tokens"] == 4096
    assert calibration["sequence_length"] == 128
