"""Convert a Hugging Face Llama, Qwen2 or Qwen3 causal-LM checkpoint into a model directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .catalog import ItemCatalog
from .config import BeamConfig, ModelConfig, XGRConfig
from .model_dir import save_model_dir
from .modules import GRDecoder

__all__ = ["SUPPORTED_MODEL_TYPES", "import_hf", "model_config_from_hf"]

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


def _rope_theta(hf: dict) -> float:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"config.json: rope type {kind!r} is not supported; allowed 'default'")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(hf: dict, sid_offset: int, levels: int, codes: int) -> ModelConfig:
    """The toolkit's ModelConfig for a Hugging Face ``config.json`` plus the SID layout."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"config.json: model_type {kind!r} is not supported; allowed {list(SUPPORTED_MODEL_TYPES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported; allowed 'silu'")
    if kind != "qwen2" and hf.get("attention_bias", False):
        raise ValueError("config.json: attention_bias = true is not supported for llama and qwen3")
    heads = hf["num_attention_heads"]
    return ModelConfig(
        name=hf.get("_name_or_path") or kind, num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, intermediate_size=hf["intermediate_size"],
        rope_theta=_rope_theta(hf), rms_norm_eps=hf.get("rms_norm_eps", 1e-6), qk_norm=kind == "qwen3",
        qkv_bias=kind == "qwen2", tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_prompt_tokens=hf.get("max_position_embeddings", 2048) - levels,
        sid_offset=sid_offset, levels=levels, codes=codes, vocab_size=hf["vocab_size"])


def import_hf(src: str | Path, out: str | Path, catalog_csv: str | Path, sid_offset: int, levels: int,
              codes: int) -> Path:
    """Read ``src`` (config.json + *.safetensors), write the model directory ``out``."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src / 'config.json'}: missing; SRC must be a Hugging Face checkpoint directory")
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{src}: no *.safetensors files (pickled checkpoints are not read)")
    cfg = model_config_from_hf(json.loads((src / "config.json").read_text()), sid_offset, levels, codes)
    catalog = ItemCatalog.from_csv(catalog_csv, codes, levels)
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        weights.update({name.removeprefix("model."): t for name, t in load_file(str(shard)).items()})
    if cfg.tie_embeddings:
        weights.pop("lm_head.weight", None)
        weights["lm_head.weight"] = weights["embed_tokens.weight"]
    decoder = GRDecoder(cfg)
    try:
        missing, unexpected = decoder.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a tensor whose shape config.json does not give
        raise ValueError(f"{src}: weights do not match config.json: {str(err).splitlines()[-1].strip()}") from None
    unexpected = [k for k in unexpected if "rotary_emb" not in k]
    if missing or unexpected:
        raise ValueError(f"{src}: weights do not match a {cfg.name} decoder; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    config = XGRConfig(model=cfg, beam=BeamConfig())
    return save_model_dir(out, config, decoder.float(), catalog)
