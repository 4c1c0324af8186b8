"""Configs: YAML round trip, presets, and errors that name the key, the value and what is allowed."""

import pytest

from xgr_toolkit import BeamConfig, ConfigError, ModelConfig, ServeConfig, XGRConfig, load_config, preset
from xgr_toolkit.config import save_config


def _load(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path)


def test_yaml_round_trip(tmp_path):
    config = XGRConfig(model=ModelConfig(name="m", num_layers=3, qk_norm=False, tie_embeddings=True, levels=4,
                                         codes=32, vocab_size=300, rope_theta=5e5),
                       beam=BeamConfig(beam_width=32, top_k=10, normalize="level"),
                       serve=ServeConfig(dtype="bfloat16", prompt_buckets=[16, 64, 256], compile=True))
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_float8_on_a_bf16_gpu_config_loads(tmp_path):
    config = _load(tmp_path, "serve:\n  device: cuda\n  dtype: bfloat16\n  linear_precision: float8\n"
                             "  float8_skip: [lm_head, layers.0.*]\n")
    assert (config.serve.linear_precision, config.serve.float8_skip) == ("float8", ["lm_head", "layers.0.*"])
    assert ServeConfig().linear_precision == "dtype" and ServeConfig().float8_skip == ["lm_head"]


def test_partial_yaml_takes_defaults_and_derives_the_vocabulary(tmp_path):
    config = _load(tmp_path, "model:\n  sid_offset: 10\n  levels: 2\n  codes: 5\nbeam:\n  top_k: 4\n")
    assert config.model.vocab_size == 20 and config.model.sid_end == 20
    assert config.beam == BeamConfig(top_k=4) and config.serve == ServeConfig()


@pytest.mark.parametrize("name, layers, hidden, heads, kv_heads, head_dim, mlp", [
    ("tiny", 2, 64, 4, 2, 16, 128),
    ("qwen3-0.6b-gr", 28, 1024, 16, 8, 128, 3072),
    ("qwen3-1.7b-gr", 28, 2048, 16, 8, 128, 6144),
])
def test_presets_have_the_benchmark_shapes(name, layers, hidden, heads, kv_heads, head_dim, mlp):
    cfg = preset(name)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.intermediate_size) == (layers, hidden, heads, kv_heads, head_dim, mlp)
    codes, context = (64, 64) if name == "tiny" else (8192, 1024)
    assert (cfg.levels, cfg.codes, cfg.sid_offset, cfg.vocab_size) == (3, codes, context, context + 3 * codes)
    assert cfg.qk_norm


def test_unknown_preset_raises():
    with pytest.raises(ConfigError, match=r"'model.preset' = 'qwen9' is invalid: allowed one of \['qwen3-0.6b-gr'"):
        preset("qwen9")


@pytest.mark.parametrize("text, key, value, allowed", [
    # unknown keys
    ("model:\n  num_layer: 2\n", "model.num_layer", 2, "one of the keys ['name', 'num_layers'"),
    ("modle:\n  num_layers: 2\n", "modle", {"num_layers": 2}, "one of the keys ['model', 'beam', 'serve']"),
    # wrong types
    ("model:\n  num_layers: two\n", "model.num_layers", "two", "a value of type int"),
    ("model:\n  num_layers: 1.5\n", "model.num_layers", 1.5, "a value of type int"),
    ("model:\n  qk_norm: maybe\n", "model.qk_norm", "maybe", "a value of type bool"),
    ("model:\n  rope_theta: big\n", "model.rope_theta", "big", "a value of type float"),
    ("serve:\n  prompt_buckets: [16, x]\n", "serve.prompt_buckets[1]", "x", "a value of type int"),
    ("serve:\n  prompt_buckets: 16\n", "serve.prompt_buckets", 16, "a value of type list[int]"),
    ("model: 3\n", "model", 3, "a mapping with keys ['name', 'num_layers'"),
    ("- 1\n", "(top level)", [1], "a mapping with keys ['model', 'beam', 'serve']"),
    # out of range
    ("model:\n  num_layers: 0\n", "model.num_layers", 0, "an integer >= 1"),
    ("model:\n  sid_offset: -1\n", "model.sid_offset", -1, "an integer >= 0"),
    ("model:\n  num_heads: 5\n", "model.num_kv_heads", 2, "a divisor of model.num_heads = 5"),
    ("model:\n  head_dim: 15\n", "model.head_dim", 15, "an even integer"),
    ("model:\n  rms_norm_eps: 0\n", "model.rms_norm_eps", 0.0, "a number in (0, 1)"),
    ("model:\n  vocab_size: 100\n", "model.vocab_size", 100, ">= sid_offset + levels * codes = 256"),
    ("model:\n  truncation: fifo\n", "model.truncation", "fifo", "one of ['sliding', 'stable']"),
    ("beam:\n  top_k: 17\n", "beam.top_k", 17, "1..beam_width = 16"),
    ("beam:\n  normalize: softmax\n", "beam.normalize", "softmax", "one of ['vocab', 'level']"),
    ("serve:\n  device: tpu\n", "serve.device", "tpu", "'cpu', 'cuda' or 'cuda:N'"),
    ("serve:\n  dtype: int8\n", "serve.dtype", "int8", "one of ['float32', 'bfloat16', 'float16']"),
    ("serve:\n  prompt_buckets: [64, 32]\n", "serve.prompt_buckets", [64, 32], "strictly increasing"),
    ("serve:\n  max_wait_ms: -1\n", "serve.max_wait_ms", -1.0, "a number >= 0"),
    ("serve:\n  linear_precision: int8\n", "serve.linear_precision", "int8", "one of ['dtype', 'float8']"),
    ("serve:\n  linear_precision: float8\n", "serve.linear_precision", "float8",
     "'dtype' unless serve.device is 'cuda'"),
    ("serve:\n  device: cuda\n  linear_precision: float8\n", "serve.linear_precision", "float8",
     "'dtype' unless serve.dtype is 'bfloat16'"),
    ("serve:\n  float8_skip: [lm_head, '']\n", "serve.float8_skip", ["lm_head", ""], "non-empty module name patterns"),
    ("serve:\n  float8_skip: lm_head\n", "serve.float8_skip", "lm_head", "a value of type list[str]"),
])
def test_bad_values_name_key_value_and_allowed(tmp_path, text, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert (err.value.key, err.value.value) == (key, value)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'config.yaml'}: config key '{key}' = {value!r} is invalid: allowed")
    assert allowed in message


def test_missing_and_unparsable_files_raise(tmp_path):
    with pytest.raises(ConfigError, match="an existing YAML file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="valid YAML"):
        _load(tmp_path, "model: [unclosed\n")


def test_dataclasses_validate_when_built_in_code():
    with pytest.raises(ConfigError, match=r"'beam.top_k' = 0 is invalid: allowed an integer >= 1"):
        BeamConfig(top_k=0)
    with pytest.raises(ConfigError, match="'model.levels' = True"):
        ModelConfig(levels=True)
