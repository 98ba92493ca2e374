"""Writers: ONNX (with a KV cache, plus onnxruntime INT8/INT4) and GGUF (llama architecture),
and `tinyllm-export`. Built on `tinyllm`; writers write, runtimes read.
"""
