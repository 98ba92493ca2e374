"""Quantization: block schemes (int8 / int4, GGML- and MatMulNBits-compatible), round-to-nearest
and calibrated methods, quantized checkpoint I/O, the PyTorch kernels that run them, and
`tinyllm-quantize`. Built on `tinyllm`; `tinyllm` imports it only from its CLI and runtimes.
"""
