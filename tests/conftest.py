"""Shared fixtures: small random models (ours and Hugging Face's), and HF's constrained beam search.

The HF models use a GR vocabulary: context tokens ``[0, SID_OFFSET)``, then L levels of C codes,
then ``TRAILING_CONTEXT`` more context tokens. Pad and eos are context tokens, never allowed in a SID.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from xgr_toolkit import GRDecoder, ItemCatalog, ModelConfig
from xgr_toolkit.hf_import import model_config_from_hf
from xgr_toolkit.serving import PackageOptions, TorchServe, TorchServeError, package_model
from xgr_toolkit.serving.server import find_java_home
from xgr_toolkit.synthetic import random_model_dir

# CI draws the same examples every run, so that a red run is reproducible; local runs explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SID_OFFSET, TRAILING_CONTEXT = 8, 4
PAD, EOS = 0, 1

HF_CLASSES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
              "qwen3": (Qwen3Config, Qwen3ForCausalLM)}


def _hf_causal_lm(kind: str, levels: int, codes: int, seed: int = 0, tie: bool = False):
    """A random HF causal LM; weights large enough that next-token distributions are peaked (no near-ties)."""
    config_cls, model_cls = HF_CLASSES[kind]
    config = config_cls(vocab_size=SID_OFFSET + levels * codes + TRAILING_CONTEXT, hidden_size=32,
                        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=8, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS,
                        bos_token_id=PAD, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)  # not all ones, so a norm weight that is not loaded shows
            elif p.ndim == 1 or "embed" in name:
                p.normal_(0.0, 0.5)  # biases (qwen2) and the embedding (tied: the head too)
            else:
                p.normal_(0.0, 0.5 / p.shape[1] ** 0.5)
    return model.eval()


def _decoder_from_hf(hf_model, levels: int, codes: int) -> GRDecoder:
    """Our decoder with the HF model's weights, configured by ``model_config_from_hf``."""
    cfg = model_config_from_hf(hf_model.config.to_dict(), SID_OFFSET, levels, codes)
    decoder = GRDecoder(cfg)
    decoder.load_state_dict({k.removeprefix("model."): v for k, v in hf_model.state_dict().items()})
    return decoder.eval()


def _hf_constrained_generate(hf_model, catalog: ItemCatalog, prompt: list[int],
                             beam_width: int) -> list[tuple[tuple[int, ...], float]]:
    """Every row HF's constrained beam search returns: (SID codes, ``sequences_scores``), padding rows included."""
    levels, codes = catalog.levels, catalog.num_codes
    tokens = (SID_OFFSET + torch.arange(levels) * codes + catalog.codes).tolist()  # [N, L]
    trie: dict[tuple[int, ...], set[int]] = {}
    for row in tokens:
        for depth in range(levels):
            trie.setdefault(tuple(row[:depth]), set()).add(row[depth])
    allowed = {prefix: sorted(children) for prefix, children in trie.items()}

    def prefix_allowed_tokens(batch_id: int, ids: torch.Tensor) -> list[int]:
        # Every running beam holds a valid prefix: each has a valid child, so W finite candidates always
        # outrank the masked (-inf) ones. The -1e9 duplicates HF keeps when items are few are valid too.
        return allowed[tuple(ids[len(prompt):].tolist())]

    input_ids = torch.tensor([prompt])
    out = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), num_beams=beam_width,
                            num_return_sequences=beam_width, max_new_tokens=levels, do_sample=False,
                            length_penalty=0.0, prefix_allowed_tokens_fn=prefix_allowed_tokens,
                            output_scores=True, return_dict_in_generate=True)
    generated = out.sequences[:, len(prompt):] - SID_OFFSET - torch.arange(levels) * codes  # [W, L] codes
    return [(tuple(sid), score) for sid, score in zip(generated.tolist(), out.sequences_scores.tolist(), strict=True)]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run tiny models: one thread is many times faster than two on a busy two-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hf_causal_lm():
    return _hf_causal_lm


@pytest.fixture
def decoder_from_hf():
    return _decoder_from_hf


@pytest.fixture
def hf_constrained_generate():
    return _hf_constrained_generate


@pytest.fixture
def small_cfg() -> ModelConfig:
    """A fast model: 1 layer, 2 levels of 4 codes, 4 context tokens before them, 2 after."""
    return ModelConfig(name="small", num_layers=1, hidden_size=16, num_heads=2, num_kv_heads=1, head_dim=8,
                       intermediate_size=32, max_prompt_tokens=16, sid_offset=4, levels=2, codes=4, vocab_size=14)


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A model directory of the ``tiny`` shape with 300 random items (ids 1000..1299)."""
    return random_model_dir(tmp_path / "tiny", ModelConfig(), num_items=300, seed=0)


@pytest.fixture(scope="module")
def serve_model(tmp_path_factory):
    """``serve_model(model_dir, name, options, **properties)``: package the model directory and serve it
    from a private TorchServe on free loopback ports, stopped on exit even when a test fails; ``ts.url``
    is its prediction URL. Skips where TorchServe, the archiver or Java is missing."""
    pytest.importorskip("ts", reason="TorchServe is not installed (pip install -e '.[serve]')")
    pytest.importorskip("model_archiver", reason="torch-model-archiver is not installed")
    try:
        find_java_home()
    except TorchServeError as err:
        pytest.skip(str(err))

    @contextlib.contextmanager
    def serve(model_dir, name: str, options: PackageOptions, **properties: str):
        store = tmp_path_factory.mktemp(f"{name}-store")
        package_model(model_dir, name, store, options)
        with TorchServe(store, {name: f"{name}.mar"}, start_timeout=150, env={"OMP_NUM_THREADS": "1"},
                        properties={"disable_system_metrics": "true", **properties}) as ts:
            ts.url = f"{ts.inference_url}/predictions/{name}"
            yield ts

    return serve


@pytest.fixture
def run_triton_interpreted():
    """``run(keyword)``: tests/test_ops_triton.py's tests matching ``keyword``, with Triton interpreted on
    the CPU in a fresh process (Triton reads TRITON_INTERPRET when its kernels are defined); asserts they pass."""
    def run(keyword: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", keyword,
             str(Path(__file__).with_name("test_ops_triton.py"))],
            env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and " passed" in result.stdout, result.stdout + result.stderr
    return run


def _strided_like_cuda(out: torch.Tensor) -> torch.Tensor:
    """The same values in the layout CUDA's fused SDPA kernels hand back: [B, H, T, D] stored as [B, T, H, D]."""
    return out.transpose(1, 2).contiguous().transpose(1, 2)


def _column_major(out: torch.Tensor) -> torch.Tensor:
    """The same values with every dimension's order reversed in memory: no two dimensions can be merged."""
    order = tuple(reversed(range(out.dim())))
    return out.permute(order).contiguous().permute(order)


@pytest.fixture(params=[_strided_like_cuda, _column_major], ids=["cuda-sdpa-layout", "column-major"])
def noncontiguous_attention(request, monkeypatch):
    """``switch_on()``: from then on every attention kernel hands back its output in a non-contiguous layout
    of the same values, as CUDA's SDPA does where the CPU's is contiguous, so a ``.view`` where a ``.reshape``
    is needed fails here, on the CPU, instead of only on a GPU. Wraps SDPA, the staged-attention dispatch
    the engine calls, and the staged-attention reference's softmax-times-values product; returns the
    number of calls of each, so a test can assert its path went through them."""
    from xgr_toolkit.engine import attend
    staged = importlib.import_module("xgr_toolkit.ops.staged_attention")  # the module, not its function

    relayout, calls = request.param, {"sdpa": 0, "staged": 0, "reference": 0}

    def wrapped(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            out = fn(*args, **kwargs)
            return relayout(out) if isinstance(out, torch.Tensor) else (relayout(out[0]), *out[1:])
        return call

    def switch_on() -> dict[str, int]:
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                            wrapped("sdpa", torch.nn.functional.scaled_dot_product_attention))
        monkeypatch.setattr(attend, "staged_attention", wrapped("staged", attend.staged_attention))
        monkeypatch.setattr(staged, "_masked_softmax_attend", wrapped("reference", staged._masked_softmax_attend))
        return calls
    return switch_on
