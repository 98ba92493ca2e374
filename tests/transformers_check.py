"""Compare a tinyllm checkpoint with what Hugging Face transformers computes from the same directory."""

import torch

from tinyllm.checkpoint import load_checkpoint


def assert_logits_match_transformers(path, length: int = 100):
    from transformers import AutoTokenizer, LlamaForCausalLM

    ours, tokenizer = load_checkpoint(path)
    theirs = LlamaForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()
    idx = torch.randint(0, ours.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(idx).logits
        actual = ours(idx)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)

    hf_tokenizer = AutoTokenizer.from_pretrained(str(path))
    text = "<|im_start|>user\nWhere does Zoë live? 3+4=7 😀<|im_end|>\n"
    assert hf_tokenizer.encode(text) == tokenizer.encode(text)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        tokenizer.apply_chat_template(messages, add_generation_prompt=True)
