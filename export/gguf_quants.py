"""GGML block encoders: every tensor type `tinyllm-export gguf` writes, as bytes llama.cpp reads.

F32/F16 are plain casts; BF16 and the 32-wide block types (q8_0, q4_0, q4_1, q5_0, q5_1) use the
`gguf` package's reference encoders. The K-quants (q2_k … q6_k: 256-wide super-blocks) are
llama.cpp's reference quantizers (quantize_row_qX_K_ref) as quantize/kquant_search.py ports them,
the same code `tinyllm-quantize q4_k --method rtn` runs: byte for byte what `llama-quantize` writes
without an imatrix.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from quantize.kquant_search import quantize_k
from quantize.kquants import LAYOUTS

_K_LAYOUTS = {layout.qtype: layout for layout in LAYOUTS.values()}


def block_size(qtype: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def fits(row_length: int, qtype: GGMLQuantizationType) -> bool:
    """Whether rows of this length split into whole blocks of `qtype` (GGML blocks run along rows)."""
    return row_length % block_size(qtype) == 0


def encode(array: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """A float32 matrix [rows, cols] as `qtype`: float arrays for F32/F16, else uint8 [rows, bytes]."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == GGMLQuantizationType.F32:
        return array
    if qtype == GGMLQuantizationType.F16:
        return array.astype(np.float16)
    if not fits(array.shape[-1], qtype):
        raise ValueError(f"rows of {array.shape[-1]} do not split into {qtype.name} blocks")
    if qtype in _K_LAYOUTS:
        return quantize_k(torch.from_numpy(array), _K_LAYOUTS[qtype]).blocks()
    return quants.quantize(array, qtype)
