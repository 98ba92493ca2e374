"""The model configuration: one dataclass, its named presets, and its `config.json` form.

`ModelConfig` describes a Llama-family decoder. It is written as a Hugging Face
`LlamaConfig`-compatible `config.json` (so `LlamaForCausalLM.from_pretrained` loads our
checkpoints unchanged) and read back from one. Presets go from a test-size model to a few tens
of millions of parameters; every preset above `test` keeps `d_model` and `d_ff` multiples of
256 so that every GGUF type, K-quants included, applies without fallback.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_write_text


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention: n_heads // n_kv_heads query heads share a K/V head
    d_ff: int = 768  # SwiGLU hidden width
    max_seq_len: int = 256  # the context the model trains on and is exported with
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    bos_token_id: int = 0  # <|endoftext|> doubles as BOS/EOS, as in GPT-2
    eos_token_id: int = 0
    extra: dict = field(default_factory=dict)  # tinyllm's own metadata (preset, data source…)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> "ModelConfig":
        """Raise TinyLLMError naming the first impossible field; return self when all is well."""
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise TinyLLMError(f"config: {name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise TinyLLMError(
                f"config: d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "pick n_heads that divides d_model")
        if self.n_heads % self.n_kv_heads:
            raise TinyLLMError(
                f"config: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}; "
                "grouped-query attention needs n_kv_heads to divide n_heads")
        if self.head_dim % 2:
            raise TinyLLMError(
                f"config: head_dim=d_model/n_heads={self.head_dim} must be even for rotary embeddings")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise TinyLLMError("config: rope_theta and norm_eps must be positive")
        for name in ("bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise TinyLLMError(f"config: {name}={getattr(self, name)} is outside the vocabulary "
                                   f"(vocab_size={self.vocab_size})")
        return self

    def num_params(self) -> int:
        """Parameter count, counting tied embeddings once."""
        attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = 3 * self.d_model * self.d_ff
        per_layer = attn + mlp + 2 * self.d_model
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return self.vocab_size * self.d_model + self.n_layers * per_layer + self.d_model + head

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # -- Hugging Face config.json -------------------------------------------------------------

    def to_hf_dict(self) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_seq_len,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
            "use_cache": True,
            "tinyllm": self.extra,
        }

    @classmethod
    def from_hf_dict(cls, d: dict, where: str = "config.json") -> "ModelConfig":
        if d.get("model_type") != "llama":
            raise TinyLLMError(f"{where}: model_type is {d.get('model_type')!r}, expected 'llama'")
        try:
            config = cls(
                vocab_size=d["vocab_size"],
                d_model=d["hidden_size"],
                n_layers=d["num_hidden_layers"],
                n_heads=d["num_attention_heads"],
                n_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
                d_ff=d["intermediate_size"],
                max_seq_len=d["max_position_embeddings"],
                rope_theta=float(d.get("rope_theta", 10000.0)),
                norm_eps=float(d.get("rms_norm_eps", 1e-5)),
                tie_embeddings=bool(d.get("tie_word_embeddings", False)),
                bos_token_id=d.get("bos_token_id", 0),
                eos_token_id=d.get("eos_token_id", 0),
                extra=d.get("tinyllm", {}),
            )
        except KeyError as e:
            raise TinyLLMError(f"{where}: missing key {e.args[0]!r}; is this a Llama config.json?") from None
        if d.get("head_dim", config.head_dim) != config.head_dim:
            raise TinyLLMError(f"{where}: head_dim={d['head_dim']} differs from hidden_size/num_attention_heads; "
                               "tinyllm supports only head_dim = hidden_size / num_attention_heads")
        try:
            return config.validate()
        except TinyLLMError as e:
            raise TinyLLMError(f"{where}: {e}") from None

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_hf_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TinyLLMError(f"{path}: not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TinyLLMError(f"{path}: not valid JSON ({e}); the checkpoint is damaged") from None
        return cls.from_hf_dict(d, where=str(path))


# d_model, n_layers, n_heads, n_kv_heads, d_ff, max_seq_len, vocab_size, tied
PRESETS: dict[str, ModelConfig] = {
    # ~0.1M parameters: trains in seconds, for tests. Dimensions stay multiples of 32 (GGML blocks).
    "test": ModelConfig(vocab_size=384, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                        max_seq_len=128),
    # ~4M: a useful model in about five minutes on two CPU cores.
    "demo": ModelConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=768,
                        max_seq_len=256),
    # ~10M: the size of the 8.7M-parameter GuppyLM.
    "small": ModelConfig(vocab_size=8192, d_model=256, n_layers=8, n_heads=8, n_kv_heads=4, d_ff=1024,
                         max_seq_len=512),
    # ~40M: for a GPU.
    "base": ModelConfig(vocab_size=16384, d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, d_ff=1536,
                        max_seq_len=1024, tie_embeddings=False),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise TinyLLMError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], extra={"preset": name})


def apply_overrides(config: ModelConfig, overrides: list[str]) -> ModelConfig:
    """Apply `field=value` strings (from `--set`) to a config, parsing values as its field types."""
    fields = {f.name: f for f in dataclasses.fields(ModelConfig) if f.name != "extra"}
    changes = {}
    for item in overrides:
        name, sep, raw = item.partition("=")
        if not sep or name not in fields:
            raise TinyLLMError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        kind = type(getattr(config, name))
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                changes[name] = raw.lower() in ("true", "1")
            else:
                changes[name] = kind(raw)
        except ValueError:
            raise TinyLLMError(f"--set {item!r}: {raw!r} is not a valid {kind.__name__}") from None
    return config.replace(**changes).validate()
