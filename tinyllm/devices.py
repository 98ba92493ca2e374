"""Which compute devices exist and which one a command uses (`--device auto|cpu|cuda[:N]`)."""

from __future__ import annotations

import torch

from tinyllm.errors import TinyLLMError


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TinyLLMError(f"--device {device}: no CUDA device visible to PyTorch "
                           f"(torch {torch.__version__}); use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise TinyLLMError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return torch.device(device)


def describe_devices() -> list[str]:
    """One line per device PyTorch can use, for `tinyllm doctor`."""
    lines = [f"cpu: {torch.get_num_threads()} threads"]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        lines.append(f"cuda:{i}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                     f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    return lines
