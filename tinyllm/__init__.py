"""tinyllm: train tiny Llama-family language models from scratch and carry them into every format.

The core package: model configuration and presets (`config`), the model (`model`), tokenizer,
corpus, training, checkpoint I/O, generation/sampling, perplexity, the runtimes and the CLI.
"""

__version__ = "0.1.0"
