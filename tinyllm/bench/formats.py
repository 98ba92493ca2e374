"""The formats `tinyllm-bench` knows: what each one is made from, which runtime runs it, and the
bound its perplexity must keep.

Every quantized format is made from one set of blocks wherever a runtime can run them: the
ONNX and GGUF int8 rows carry `torch-int8`'s q8_0 blocks, and the ONNX and GGUF int4 rows carry
`torch-int4-gptq`'s calibrated q4_0 blocks, exported verbatim (never quantized twice). So those
rows must reproduce their source's perplexity, and the bench checks that they do. The other GGUF
types are made by tinyllm's GGUF writer from float32 (GGML's reference rounding), and
`gguf-q4_0-llama-quantize` by llama.cpp's own `llama-quantize` on the F32 file: the reference
tinyllm's calibrated int4 must beat.

The ONNX rows are the fused graph (GroupQueryAttention, packed QKV, MatMulNBits). onnx-int8 and
onnx-int4 run at accuracy level 4, the export's CPU default: the kernel rounds activations to int8,
so each is held to its source's PPL within LEVEL4_PCT and to a KL divergence at most
KLD_VS_LLAMA_CPP times llama.cpp's on the same blocks (which rounds activations to q8_0 the same
way); the -level0 rows compute in float32 and must reproduce their source exactly. The anchors are
what an onnxruntime user would otherwise run: onnxruntime-genai's own model builder on the float32
checkpoint (`onnx-int4-genai-builder`), and onnxruntime's `quantize_dynamic` on the float32 export
(`onnx-int8-dynamic`).
The reference at its best (issue 13): `llama-imatrix` runs on gguf-f32 over the calibration text
the calibrated rows use (the first --calib-tokens of the training split, `calibration-text`), and
`llama-quantize --imatrix` makes Q2_K, Q3_K_M, Q4_K_M, Q5_K_M and Q6_K from it (`gguf-*-imatrix`),
each beside the same type without the imatrix (`gguf-*-llama-quantize`). `frontier.py` flags each
imatrix point that no tinyllm-made file dominates.

A row can be sized by another: `params["target_bpw_of"] = NAME` makes the artifact of NAME first and
hands its measured bits per weight (whole file bits / parameters) to this row's maker as
`target_bpw`. A verbatim export of such a row inherits the target (see `target_of`), and a GGUF row
with a target must land within ±BPW_TOLERANCE of it (only GGUF rows: the bits per weight a target
means are a whole GGUF file's, tokenizer included, which a checkpoint's weights file is not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinyllm.bench.frontier import KLD_FACTOR
from tinyllm.errors import TinyLLMError

REFERENCE = "torch-f32"
PARITY = ("torch-f32", "onnx-f32", "gguf-f32")
PARITY_PCT = 0.05  # |ΔPPL| the float32 runtimes (and verbatim exports of one set of blocks) may show
# Calibrated int4's mean KLD at most this fraction of llama-quantize Q4_0's. KLD, not ΔPPL: on the
# demo's easy text a lossier file's perplexity can come out lower (measured: RTN +0.05%, GPTQ +0.17%,
# with KLD 1.5e-3 against 5.5e-4).
GPTQ_GOAL = 0.5
# MatMulNBits at accuracy level 4 against the same blocks at level 0 (PPL, %): measured +0.003%
# (int4) on the test model (docs/onnx.md); the bound leaves room for other models and CPUs' kernels.
LEVEL4_PCT = 0.1
KLD_VS_LLAMA_CPP = 1.5  # onnx-int8/int4's mean KLD at most this multiple of gguf-q8_0/q4_0's (same blocks)
BPW_TOLERANCE = 0.02  # a row sized to another's bits per weight lands within ±2% of it
# llama-quantize's types the imatrix reference covers, with the ΔPPL ceiling each is held to.
LLAMA_QUANTIZE_TYPES = {"Q2_K": 25.0, "Q3_K_M": 10.0, "Q4_K_M": 5.0, "Q5_K_M": 2.0, "Q6_K": 1.0}


@dataclass(frozen=True)
class Format:
    name: str
    runtime: str  # "torch", "onnxruntime" or "llama.cpp"
    make: str  # "checkpoint" (the float32 directory itself), "quantize", "onnx", "onnx-dynamic", "gguf", …
    source: str | None  # the format it is made from; None: the float32 checkpoint
    params: dict = field(default_factory=dict)  # arguments of the maker (part of the cache key)
    max_delta_pct: float | None = None  # ΔPPL vs torch-f32 above which the row is flagged
    same_as: str | None = None  # a format whose PPL it must match within same_pct (same weights)
    what: str = ""  # one line for the report: what the artifact is
    same_pct: float = PARITY_PCT
    kld_vs: tuple[str, float] | None = None  # (format, factor): mean KLD at most factor × that row's

    @property
    def gguf(self) -> bool:
        return self.runtime == "llama.cpp"

    @property
    def imatrix(self) -> bool:
        return bool(self.params.get("imatrix"))

    @property
    def inputs(self) -> list[str]:
        """The formats whose artifacts this one is made from or sized by (their keys are in its key)."""
        names = [self.source] if self.source else []
        if self.make == "llama-imatrix":
            names.append("calibration-text")
        if self.imatrix:
            names.append("imatrix")
        if self.params.get("target_bpw_of"):
            names.append(self.params["target_bpw_of"])
        return names


def _formats() -> dict[str, Format]:
    rows = [
        Format("torch-f32", "torch", "checkpoint", None, what="the float32 checkpoint"),
        Format("torch-int8", "torch", "quantize", None, {"scheme": "int8", "method": "rtn"}, 0.1,
               what="int8 (q8_0 blocks), round to nearest"),
        Format("torch-int4", "torch", "quantize", None, {"scheme": "int4", "method": "rtn"}, 5.0,
               what="int4 (q4_0 blocks), round to nearest"),
        Format("torch-int4-gptq", "torch", "quantize", None, {"scheme": "int4", "method": "gptq"}, 5.0,
               kld_vs=("gguf-q4_0-llama-quantize", GPTQ_GOAL),
               what="int4 (q4_0 blocks), GPTQ-calibrated on the training split"),
        Format("onnx-f32", "onnxruntime", "onnx", None, max_delta_pct=PARITY_PCT,
               what="float32 fused ONNX graph (GroupQueryAttention, packed QKV)"),
        Format("onnx-int8", "onnxruntime", "onnx", "torch-int8", {"accuracy_level": 4}, max_delta_pct=0.1,
               same_as="torch-int8", same_pct=LEVEL4_PCT, kld_vs=("gguf-q8_0", KLD_VS_LLAMA_CPP),
               what="torch-int8's blocks in MatMulNBits (bits 8), accuracy level 4 (int8 activations in the kernel)"),
        Format("onnx-int8-level0", "onnxruntime", "onnx", "torch-int8", {"accuracy_level": 0}, max_delta_pct=0.1,
               same_as="torch-int8", what="torch-int8's blocks in MatMulNBits (bits 8), accuracy level 0 "
                                          "(float32 activations; onnxruntime dequantizes the weight every call)"),
        Format("onnx-int8-dynamic", "onnxruntime", "onnx-dynamic", "onnx-f32",
               what="onnxruntime's quantize_dynamic of onnx-f32 (int8 weights per channel, u8 activations per "
                    "call: DynamicQuantizeLinear + MatMulInteger), what an onnxruntime user would run"),
        Format("onnx-int4", "onnxruntime", "onnx", "torch-int4-gptq", {"accuracy_level": 4}, max_delta_pct=5.0,
               same_as="torch-int4-gptq", same_pct=LEVEL4_PCT, kld_vs=("gguf-q4_0", KLD_VS_LLAMA_CPP),
               what="torch-int4-gptq's blocks in MatMulNBits, accuracy level 4 (int8 activations in the kernel)"),
        Format("onnx-int4-level0", "onnxruntime", "onnx", "torch-int4-gptq", {"accuracy_level": 0},
               max_delta_pct=5.0, same_as="torch-int4-gptq",
               what="torch-int4-gptq's blocks in MatMulNBits, accuracy level 0 (float32 activations)"),
        Format("onnx-int4-genai-builder", "onnxruntime", "genai-builder", None, {"precision": "int4"}, 5.0,
               what="onnxruntime-genai's model builder on the float32 checkpoint (-p int4: its RTN blocks, level 4)"),
        Format("gguf-f32", "llama.cpp", "gguf", None, {"type": "f32"}, PARITY_PCT, what="GGUF F32"),
        Format("gguf-f16", "llama.cpp", "gguf", None, {"type": "f16"}, PARITY_PCT, what="GGUF F16"),
        Format("gguf-q8_0", "llama.cpp", "gguf", "torch-int8", max_delta_pct=0.1, same_as="torch-int8",
               what="torch-int8's q8_0 blocks, copied"),
        Format("gguf-q4_0", "llama.cpp", "gguf", "torch-int4-gptq", max_delta_pct=5.0, same_as="torch-int4-gptq",
               what="torch-int4-gptq's q4_0 blocks, copied"),
        Format("gguf-q4_1", "llama.cpp", "gguf", None, {"type": "q4_1"}, 5.0, what="GGUF Q4_1 by tinyllm's writer"),
        Format("gguf-q5_0", "llama.cpp", "gguf", None, {"type": "q5_0"}, 2.0, what="GGUF Q5_0 by tinyllm's writer"),
        Format("gguf-q4_k", "llama.cpp", "gguf", None, {"type": "q4_k"}, 5.0, what="GGUF Q4_K by tinyllm's writer"),
        Format("gguf-q6_k", "llama.cpp", "gguf", None, {"type": "q6_k"}, 1.0, what="GGUF Q6_K by tinyllm's writer"),
        Format("gguf-q4_0-llama-quantize", "llama.cpp", "llama-quantize", "gguf-f32", {"type": "Q4_0"}, 5.0,
               what="llama.cpp's llama-quantize Q4_0 of gguf-f32"),
    ]
    for type_name, ceiling in LLAMA_QUANTIZE_TYPES.items():  # the sizes sweep (SIZES below)
        rows.append(Format(f"gguf-{type_name.lower()}-llama-quantize", "llama.cpp", "llama-quantize", "gguf-f32",
                           {"type": type_name}, ceiling, what=f"llama.cpp's llama-quantize {type_name} of gguf-f32"))
        rows.append(Format(f"gguf-{type_name.lower()}-imatrix", "llama.cpp", "llama-quantize", "gguf-f32",
                           {"type": type_name, "imatrix": True}, ceiling,
                           what=f"llama-quantize {type_name} of gguf-f32 with llama-imatrix's importance matrix "
                                "from the calibration text"))
        # tinyllm's calibrated answers at each of those sizes: one K scheme throughout, and a mix
        # of types chosen for exactly the imatrix file's bits per weight.
        scheme, low = type_name.split("_")[0].lower() + "_k", type_name.lower()
        rows.append(Format(f"torch-{scheme}-gptq", "torch", "quantize", None, {"scheme": scheme, "method": "gptq"},
                           ceiling, what=f"{scheme} super-blocks (every matrix), GPTQ-calibrated on the training split"))
        rows.append(Format(f"gguf-{scheme}-gptq", "llama.cpp", "gguf", f"torch-{scheme}-gptq", max_delta_pct=ceiling,
                           same_as=f"torch-{scheme}-gptq", what=f"torch-{scheme}-gptq's blocks, copied"))
        rows.append(Format(f"torch-auto-{low}", "torch", "quantize", None,
                           {"scheme": "auto", "method": "gptq", "target_bpw_of": f"gguf-{low}-imatrix"}, ceiling,
                           what=f"auto: each tensor's type chosen by measured KLD for gguf-{low}-imatrix's size, GPTQ"))
        rows.append(Format(f"gguf-auto-{low}", "llama.cpp", "gguf", f"torch-auto-{low}", max_delta_pct=ceiling,
                           same_as=f"torch-auto-{low}", what=f"torch-auto-{low}'s blocks, copied"))
    return {f.name: f for f in rows}


FORMATS = _formats()
# `--formats sizes`: llama.cpp at its best at Q2_K…Q6_K (with and without an imatrix) and tinyllm's
# calibrated files at those sizes: the quantization comparison, best made on real text
# (docs/quantization.md). `--formats core` is every other row: what `make demo` benches.
SIZES = tuple(n for n in FORMATS if any(n.startswith(p) for p in (
    *(f"gguf-{t.lower()}-" for t in LLAMA_QUANTIZE_TYPES), "torch-auto-", "gguf-auto-",
    *(f"{r}-{t.split('_')[0].lower()}_k-gptq" for t in LLAMA_QUANTIZE_TYPES for r in ("torch", "gguf")))))
GROUPS = {"all": tuple(FORMATS), "core": tuple(n for n in FORMATS if n not in SIZES), "sizes": SIZES}
# Artifacts that rows are made from but that are not measured themselves.
INTERMEDIATES = {f.name: f for f in (
    Format("calibration-text", "text", "calibration-text", None,
           what="the calibration tokens of the GPTQ rows (the training split's first --calib-tokens), as text"),
    Format("imatrix", "llama.cpp", "llama-imatrix", "gguf-f32",
           what="llama-imatrix of gguf-f32 over calibration-text (--parse-special, chunks of the model's context)"),
)}


def lookup(name: str) -> Format:
    """A row or an intermediate artifact, by name."""
    return FORMATS[name] if name in FORMATS else INTERMEDIATES[name]


def target_of(fmt: Format) -> str | None:
    """The format whose size `fmt` is made to match: its own `target_bpw_of`, or its source's."""
    if fmt.params.get("target_bpw_of"):
        return fmt.params["target_bpw_of"]
    return target_of(lookup(fmt.source)) if fmt.source else None


def check_inputs(formats: dict[str, Format]) -> None:
    """Every input names a known format and no format depends on itself (a table error, not input)."""
    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise TinyLLMError(f"format {path[0]}: depends on itself ({' -> '.join(path + (name,))})")
        known = formats.get(name) or INTERMEDIATES.get(name)
        if known is None:
            raise TinyLLMError(f"format {path[-1]}: is made from or sized by unknown format {name!r}")
        for child in known.inputs:
            visit(child, path + (name,))

    for name in formats:
        visit(name, ())


check_inputs(FORMATS)


def parse_formats(spec: str) -> list[Format]:
    """A comma-separated list of names and groups (all, core, sizes), in the order given
    (duplicates dropped)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise TinyLLMError("--formats is empty; give all, core, sizes or names such as torch-f32,gguf-q4_0")
    names = [m for n in names for m in GROUPS.get(n, (n,))]
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise TinyLLMError(f"--formats: unknown format {', '.join(unknown)}; choose from "
                           f"{', '.join(GROUPS)}, {', '.join(FORMATS)}")
    return [FORMATS[n] for n in dict.fromkeys(names)]


def bound_text(fmt: Format) -> str:
    """What a row is held to, in words (the report's bound column)."""
    parts = []
    if fmt.name in PARITY[1:]:
        parts.append(f"|ΔPPL| ≤ {PARITY_PCT}% vs torch-f32 (parity)")
    elif fmt.max_delta_pct is not None:
        parts.append(f"ΔPPL ≤ +{fmt.max_delta_pct}%")
    if fmt.same_as:
        parts.append(f"PPL within {fmt.same_pct}% of {fmt.same_as} (same blocks)")
    if fmt.kld_vs:
        parts.append(f"mean KLD ≤ {fmt.kld_vs[1]:g}× {fmt.kld_vs[0]}'s")
    if fmt.imatrix:
        parts.append(f"the goal: a tinyllm file no larger with mean KLD ≤ {KLD_FACTOR:g}× its")
    if fmt.gguf and target_of(fmt):
        parts.append(f"bits/w within ±{100 * BPW_TOLERANCE:g}% of {target_of(fmt)}'s")
    return "; ".join(parts) or ("the reference" if fmt.name == REFERENCE else "none: an anchor, another tool's file")


def check_bounds(rows: dict[str, dict]) -> None:
    """Set each measured row's `bound` ({text, ok}) and append a line to `flags` for every bound broken."""
    base = rows.get(REFERENCE, {}).get("ppl")
    for name, row in rows.items():
        fmt = FORMATS[name]
        row["bound"] = {"text": bound_text(fmt), "ok": None}
        if row.get("ppl") is None or base is None:
            continue
        flags = row.setdefault("flags", [])
        delta = 100 * (row["ppl"] / base - 1)
        if name in PARITY[1:] and abs(delta) > PARITY_PCT:
            flags.append(f"{name}: PPL differs from torch-f32 by {delta:+.4f}%, "
                         f"beyond the ±{PARITY_PCT}% parity bound")
        elif fmt.max_delta_pct is not None and delta > fmt.max_delta_pct:
            flags.append(f"{name}: ΔPPL {delta:+.3f}% exceeds its bound of +{fmt.max_delta_pct}%")
        twin = rows.get(fmt.same_as or "", {}).get("ppl")
        if twin is not None and abs(100 * (row["ppl"] / twin - 1)) > fmt.same_pct:
            flags.append(f"{name}: PPL {row['ppl']:.5f} differs from {fmt.same_as}'s {twin:.5f} (same blocks) by "
                         f"more than {fmt.same_pct}%")
        other, factor = fmt.kld_vs or ("", 0.0)
        reference_kld = rows.get(other, {}).get("kld_mean")
        if reference_kld is not None and row.get("kld_mean") is not None and row["kld_mean"] > factor * reference_kld:
            flags.append(f"{name}: mean KLD {row['kld_mean']:.5f} is above {factor:g}× {other}'s "
                         f"({reference_kld:.5f})")
        target, bpw = row.get("target_bpw"), row.get("bits_per_weight")
        if fmt.gguf and target and bpw is not None and abs(bpw / target - 1) > BPW_TOLERANCE:
            flags.append(f"{name}: {bpw:.3f} bits/w is {100 * (bpw / target - 1):+.1f}% off its target "
                         f"{target:.3f} ({target_of(fmt)}'s), beyond ±{100 * BPW_TOLERANCE:g}%")
        row["bound"]["ok"] = not flags


def parity(rows: dict[str, dict]) -> dict | None:
    """The parity column: torch-f32, onnx-f32 and gguf-f32 must agree on PPL within PARITY_PCT."""
    ppl = {n: rows[n]["ppl"] for n in PARITY if rows.get(n, {}).get("ppl") is not None}
    if "gguf-f32" in rows and rows["gguf-f32"].get("ppl_own_tokenizer") is not None:
        # llama-perplexity -f on the text itself: llama.cpp's tokenizer, not tinyllm's tokens
        ppl["gguf-f32 (llama.cpp tokenizing)"] = rows["gguf-f32"]["ppl_own_tokenizer"]
    if len(ppl) < 2:
        return None
    spread = 100 * (max(ppl.values()) / min(ppl.values()) - 1)
    return {"formats": list(ppl), "ppl": ppl, "max_rel_diff_pct": spread, "bound_pct": PARITY_PCT,
            "ok": spread <= PARITY_PCT}
