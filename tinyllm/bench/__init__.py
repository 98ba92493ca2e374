"""The bench harness (`tinyllm-bench`): every format of one checkpoint measured on the same text,
by the same method, against the same float32 reference.

    formats.py     the format names, what each is made from, the bound its perplexity must keep
    artifacts.py   making the files (quantize, export, llama-quantize), cached by content hash
    kld.py         the torch-f32 reference logits in llama-perplexity's KL-divergence file format
    measure.py     PyTorch / onnxruntime rows, each in a fresh process: speed, memory, fidelity
    llama_rows.py  GGUF rows by llama.cpp's own tools: llama-perplexity, llama-bench, llama-server
    machine.py     the machine record written beside every figure
    runner.py      one run: text, tokens, the rows in order, bounds and parity
    frontier.py    bits per weight against KLD: the Pareto fronts, the goal against llama.cpp + imatrix
    report.py      the terminal table, results.json, report.md and the plots
    cli.py         `tinyllm-bench` / `tinyllm bench`
"""
