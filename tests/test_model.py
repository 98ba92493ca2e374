"""The model: cached decoding equals a full forward pass; configs validate; presets are sized."""

import pytest
import torch

from tinyllm.config import PRESETS, ModelConfig, apply_overrides, preset
from tinyllm.errors import TinyLLMError
from tinyllm.model import Transformer


def small_config(**changes) -> ModelConfig:
    return preset("test").replace(**changes)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa-2", "mqa"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_cached_decoding_equals_full_forward(n_kv_heads, tie):
    torch.manual_seed(0)
    config = small_config(n_kv_heads=n_kv_heads, tie_embeddings=tie)
    model = Transformer(config).eval()
    for length in (1, 2, 7, 33, 128):
        idx = torch.randint(0, config.vocab_size, (2, length))
        with torch.no_grad():
            full = model(idx)
            cache = model.new_cache(2)
            split = max(1, length // 3)
            steps = [model(idx[:, :split], cache)]  # prefill
            steps += [model(idx[:, i:i + 1], cache) for i in range(split, length)]  # one at a time
        assert cache.length == length
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_chunked_prefill_after_cache_uses_correct_mask():
    """Several new tokens after a cached prefix need a bottom-right-aligned causal mask."""
    torch.manual_seed(1)
    model = Transformer(small_config()).eval()
    idx = torch.randint(0, 384, (1, 40))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(1)
        parts = [model(idx[:, a:b], cache) for a, b in ((0, 10), (10, 25), (25, 40))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_cache_overflow_is_refused():
    model = Transformer(small_config()).eval()
    cache = model.new_cache(1, max_len=8)
    with torch.no_grad(), pytest.raises(ValueError, match="exceed the context"):
        model(torch.zeros(1, 9, dtype=torch.long), cache)


def test_tied_embeddings_share_storage():
    model = Transformer(small_config(tie_embeddings=True))
    assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_count_and_dimensions(name):
    config = preset(name)
    actual = sum(p.numel() for p in Transformer(config).parameters()) if name != "base" else None
    if actual is not None:
        assert config.num_params() == actual
    if name != "test":
        assert config.d_model % 256 == 0 and config.d_ff % 256 == 0
    bounds = {"test": (2e4, 1.2e5), "demo": (2e6, 6e6), "small": (8e6, 12e6), "base": (3e7, 5e7)}[name]
    assert bounds[0] <= config.num_params() <= bounds[1]


@pytest.mark.parametrize("changes, message", [
    (dict(d_model=100, n_heads=3), "not divisible by n_heads"),
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
    (dict(n_layers=0), "n_layers must be a positive integer"),
    (dict(d_model=36, n_heads=4), "must be even"),
])
def test_impossible_shapes_are_refused(changes, message):
    with pytest.raises(TinyLLMError, match=message):
        small_config(**changes).validate()


def test_unknown_preset_names_the_choices():
    with pytest.raises(TinyLLMError, match="unknown preset 'huge'.*test, demo, small, base"):
        preset("huge")


def test_overrides_parse_types_and_reject_unknown_fields():
    config = apply_overrides(preset("test"), ["n_layers=3", "tie_embeddings=false", "rope_theta=5e5"])
    assert (config.n_layers, config.tie_embeddings, config.rope_theta) == (3, False, 5e5)
    with pytest.raises(TinyLLMError, match="FIELD=VALUE"):
        apply_overrides(preset("test"), ["layers=3"])
    with pytest.raises(TinyLLMError, match="not a valid int"):
        apply_overrides(preset("test"), ["n_layers=three"])


def test_hf_config_round_trip(tmp_path):
    config = preset("demo")
    config.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == config
