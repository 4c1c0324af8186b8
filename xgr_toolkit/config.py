"""Structured configuration: the model, the beam search and serving.

Dataclasses inside, YAML at the edges (omegaconf). Every value is checked when a config is built,
and a bad one raises :class:`ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .truncation import TRUNCATIONS

__all__ = [
    "BeamConfig",
    "ConfigError",
    "ModelConfig",
    "PRESETS",
    "ServeConfig",
    "XGRConfig",
    "load_config",
    "preset",
    "save_config",
]

NORMALIZATIONS = ("vocab", "level")
DTYPES = ("float32", "bfloat16", "float16")
# "dtype": the decoder's linear layers in serve.dtype; "float8": in e4m3 (engine/precision.py)
LINEAR_PRECISIONS = ("dtype", "float8")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of its allowed range."""

    def __init__(self, key: str, value: Any, allowed: str, where: str = ""):
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}config key '{key}' = {value!r} is invalid: allowed {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


def _at_least(section: str, name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{section}.{name}", value, f"an integer >= {low}")


def _one_of(section: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{section}.{name}", value, f"one of {list(allowed)}")


@dataclass
class ModelConfig:
    """Shape of a Llama/Qwen3-style GR decoder and its vocabulary layout.

    Token ids: ``[0, sid_offset)`` and ``[sid_offset + levels*codes, vocab_size)`` are context
    tokens; the token of code ``c`` at SID level ``j`` is ``sid_offset + j*codes + c``.
    """

    name: str = "tiny"
    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    qk_norm: bool = True  # Qwen3: RMSNorm over each head's q and k before RoPE
    qkv_bias: bool = False  # Qwen2: biases on the q, k, v projections
    tie_embeddings: bool = False
    dropout: float = 0.0  # training only: on the embeddings and each residual branch
    max_prompt_tokens: int = 96
    # A longer history: "sliding" keeps its last items; "stable" drops a quarter of the limit at once, so a
    # returning user's prompt keeps its start (truncation.py). Training, evaluation and serving all use it.
    truncation: str = "sliding"
    sid_offset: int = 64  # context tokens before the SID codes
    levels: int = 3  # L
    codes: int = 64  # C, codes a level
    vocab_size: int = 0  # 0: sid_offset + levels * codes

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "max_prompt_tokens", "levels", "codes"):
            _at_least("model", name, getattr(self, name), 1)
        _at_least("model", "sid_offset", self.sid_offset, 0)
        _one_of("model", "truncation", self.truncation, TRUNCATIONS)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("model.num_kv_heads", self.num_kv_heads,
                              f"a divisor of model.num_heads = {self.num_heads}")
        if self.head_dim % 2:
            raise ConfigError("model.head_dim", self.head_dim, "an even integer (rotary pairs)")
        if not self.rope_theta > 0:
            raise ConfigError("model.rope_theta", self.rope_theta, "a number > 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError("model.dropout", self.dropout, "a number in [0, 1)")
        if not 0 < self.rms_norm_eps < 1:
            raise ConfigError("model.rms_norm_eps", self.rms_norm_eps, "a number in (0, 1)")
        if self.vocab_size == 0:
            self.vocab_size = self.sid_end
        if self.vocab_size < self.sid_end:
            raise ConfigError("model.vocab_size", self.vocab_size,
                              f">= sid_offset + levels * codes = {self.sid_end}")

    @property
    def sid_end(self) -> int:
        """One past the last SID token."""
        return self.sid_offset + self.levels * self.codes


@dataclass
class BeamConfig:
    """Constrained beam search over the catalog's semantic IDs."""

    beam_width: int = 16  # W
    top_k: int = 16  # items returned
    normalize: str = "vocab"  # "vocab": log-softmax over the vocabulary; "level": over the level's codes

    def __post_init__(self) -> None:
        _at_least("beam", "beam_width", self.beam_width, 1)
        _at_least("beam", "top_k", self.top_k, 1)
        if self.top_k > self.beam_width:
            raise ConfigError("beam.top_k", self.top_k, f"1..beam_width = {self.beam_width}")
        _one_of("beam", "normalize", self.normalize, NORMALIZATIONS)


@dataclass
class ServeConfig:
    """How the engine runs: device, precision, batching and compilation."""

    engine: str = "fast"  # "fast" (GREngine) or "reference" (the definition, slow)
    device: str = "cpu"
    dtype: str = "float32"
    max_batch: int = 8
    max_wait_ms: float = 5.0
    prompt_buckets: list[int] = field(default_factory=lambda: [32, 96])
    max_exclusions: int = 256  # excluded items a request may name
    compile: bool = False  # torch.compile each phase (prefill, steps)
    cuda_graphs: bool = False  # replay each (batch, prompt) bucket's whole search as one CUDA graph
    # The xGR techniques, each switchable for ablations; the defaults are the fast engine.
    shared_prompt_kv: bool = True  # False: the prompt KV is duplicated per beam (dense attention)
    masked_sorter: bool = True  # False: torch.topk over all W x C candidates
    overlap: bool = True  # False: each batch's host work waits for the GPU
    # Prompt-KV store across requests (engine/prompt_store.py): a returning user's cached prefix is not
    # prefilled again. Off (0 bytes) by default until it is measured on a GPU.
    prefix_cache_bytes: int = 0  # device memory for cached prompt KV blocks; 0: off
    prefix_cache_block: int = 16  # tokens a block; must divide every prompt bucket
    # prefill lengths of a batch of returning users (the uncached rest, rounded up); empty: the prompt buckets
    prefix_cache_suffixes: list[int] = field(default_factory=list)
    linear_precision: str = "dtype"  # "float8": the decoder's linear layers in e4m3 (the fast engine; a GPU)
    # Under float8, the linear layers kept in serve.dtype: fnmatch patterns of the engine's module names
    # ("lm_head", "layers.0.*", "*.down_proj"; q/k/v are "qkv_proj" and gate/up "gate_up_proj" there).
    float8_skip: list[str] = field(default_factory=lambda: ["lm_head"])

    def __post_init__(self) -> None:
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError("serve.device", self.device, "'cpu', 'cuda' or 'cuda:N'")
        _one_of("serve", "engine", self.engine, ("fast", "reference"))
        _one_of("serve", "dtype", self.dtype, DTYPES)
        _at_least("serve", "max_batch", self.max_batch, 1)
        _at_least("serve", "max_exclusions", self.max_exclusions, 0)
        _at_least("serve", "prefix_cache_bytes", self.prefix_cache_bytes, 0)
        _at_least("serve", "prefix_cache_block", self.prefix_cache_block, 1)
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise ConfigError("serve.cuda_graphs", True, "false unless serve.device is 'cuda'")
        if not self.max_wait_ms >= 0:
            raise ConfigError("serve.max_wait_ms", self.max_wait_ms, "a number >= 0")
        _one_of("serve", "linear_precision", self.linear_precision, LINEAR_PRECISIONS)
        if self.linear_precision == "float8" and not self.device.startswith("cuda"):
            raise ConfigError("serve.linear_precision", "float8",
                              "'dtype' unless serve.device is 'cuda' (float8 needs a GPU of compute capability >= 8.9)")
        if self.linear_precision == "float8" and self.dtype != "bfloat16":
            raise ConfigError("serve.linear_precision", "float8",
                              "'dtype' unless serve.dtype is 'bfloat16' (activations and weights are scaled from bf16)")
        if any(not isinstance(p, str) or not p for p in self.float8_skip):
            raise ConfigError("serve.float8_skip", list(self.float8_skip), "a list of non-empty module name patterns")
        buckets = list(self.prompt_buckets)
        if not buckets or buckets != sorted(set(buckets)) or buckets[0] < 1:
            raise ConfigError("serve.prompt_buckets", buckets,
                              "a non-empty, strictly increasing list of integers >= 1")
        suffixes = list(self.prefix_cache_suffixes)
        if suffixes != sorted(set(suffixes)) or (suffixes and suffixes[0] < 1):
            raise ConfigError("serve.prefix_cache_suffixes", suffixes,
                              "a strictly increasing list of integers >= 1 (empty: the prompt buckets)")
        if self.prefix_cache_bytes and any(b % self.prefix_cache_block for b in buckets):
            raise ConfigError("serve.prefix_cache_block", self.prefix_cache_block,
                              f"a divisor of every serve.prompt_buckets entry {buckets} (the store is on)")


@dataclass
class XGRConfig:
    """Everything a model directory's ``config.yaml`` holds."""

    model: ModelConfig = field(default_factory=ModelConfig)
    beam: BeamConfig = field(default_factory=BeamConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def _qwen3(name: str, layers: int, hidden: int, mlp: int, prompt: int) -> ModelConfig:
    # GR vocabulary of ../shared/BENCHMARKS.md: 1,024 context tokens + 3 levels x 8,192 codes.
    return ModelConfig(name=name, num_layers=layers, hidden_size=hidden, num_heads=16,
                       num_kv_heads=8, head_dim=128, intermediate_size=mlp, rope_theta=1e6,
                       qk_norm=True, tie_embeddings=False, max_prompt_tokens=prompt,
                       sid_offset=1024, levels=3, codes=8192)


PRESETS = {
    "tiny": lambda: ModelConfig(),
    "qwen3-0.6b-gr": lambda: _qwen3("qwen3-0.6b-gr", 28, 1024, 3072, 1024),
    "qwen3-1.7b-gr": lambda: _qwen3("qwen3-1.7b-gr", 28, 2048, 6144, 8192),
}


def preset(name: str) -> ModelConfig:
    """A named model shape: ``tiny``, ``qwen3-0.6b-gr`` or ``qwen3-1.7b-gr``."""
    if name not in PRESETS:
        raise ConfigError("model.preset", name, f"one of {sorted(PRESETS)}")
    return PRESETS[name]()


T = TypeVar("T")


def _keys(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _type_name(hint: Any) -> str:
    return str(hint) if typing.get_origin(hint) else getattr(hint, "__name__", str(hint))


def _declared_type(schema: type, full_key: str) -> Any:
    """The declared type of ``full_key`` (``model.num_layers``, ``serve.prompt_buckets[0]``) in ``schema``."""
    hint: Any = schema
    for part in full_key.split("."):
        name, _, index = part.partition("[")
        hint = typing.get_type_hints(hint)[name]
        if index:
            hint = typing.get_args(hint)[0]
    return hint


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _declared_defaults(schema: type) -> DictConfig:
    """``schema`` for omegaconf, each section's fields at their declared defaults: building the default
    sections ran their ``__post_init__``, and a value it derived (``model.vocab_size``) must be derived
    again from the merged values, not kept from the defaults."""
    base = OmegaConf.structured(schema)
    for name, hint in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(hint):
            for f in dataclasses.fields(hint):
                if f.default is not dataclasses.MISSING:
                    base[name][f.name] = f.default
    return base


def _build(schema: type[T], values: Any, where: str) -> T:
    """Merge ``values`` into the structured ``schema``; unknown keys and type errors become ConfigError."""
    if not isinstance(values, (dict, DictConfig)):
        raise ConfigError("(top level)", _plain(values), f"a mapping with keys {_keys(schema)}", where)
    hints = typing.get_type_hints(schema)
    for name in _keys(schema):  # a section given as a scalar or list: omegaconf's error names no key
        if dataclasses.is_dataclass(hints[name]) and name in values \
                and not isinstance(values[name], (dict, DictConfig)):
            raise ConfigError(name, _plain(values[name]), f"a mapping with keys {_keys(hints[name])}", where)
    try:
        return OmegaConf.to_object(OmegaConf.merge(_declared_defaults(schema), values))
    except ConfigError as err:  # a range check in __post_init__: say which file
        raise ConfigError(err.key, err.value, err.allowed, where) from None
    except ConfigKeyError as err:
        raise ConfigError(err.full_key, _plain(OmegaConf.select(OmegaConf.create(values), err.full_key)),
                          f"one of the keys {_keys(err.object_type)}", where) from None
    except OmegaConfBaseException as err:
        if not err.full_key:
            raise ConfigError("?", None, str(err).splitlines()[0], where) from None
        raise ConfigError(err.full_key, err.value,
                          f"a value of type {_type_name(_declared_type(schema, err.full_key))}", where) from None


def load_config(path: str | Path) -> XGRConfig:
    """Read and validate a ``config.yaml``; unknown keys, wrong types and bad ranges raise."""
    path = Path(path)
    try:
        values = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(str(path), None, "an existing YAML file") from None
    except Exception as err:  # yaml's parser errors have no common base worth naming
        raise ConfigError(str(path), None, f"valid YAML ({err})") from None
    return _build(XGRConfig, values, str(path))


def save_config(config: XGRConfig, path: str | Path) -> None:
    OmegaConf.save(OmegaConf.create(dataclasses.asdict(config)), Path(path))
