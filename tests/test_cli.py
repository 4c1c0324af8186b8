"""The ``xgr`` command: import a Hugging Face checkpoint, recommend, and refuse bad input by name."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from xgr_toolkit import build_request, load_model_dir
from xgr_toolkit.cli import main
from xgr_toolkit.reference import reference_beam_search
from xgr_toolkit.synthetic import random_catalog


def _xgr(capsys, *args):
    """Run ``xgr`` in-process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def _write_catalog_csv(path: Path, catalog) -> Path:
    header = ",".join(["item_id"] + [f"code_{j}" for j in range(catalog.levels)])
    rows = [",".join(map(str, [item, *sid])) for item, sid in zip(catalog.item_ids.tolist(),
                                                                  catalog.codes.tolist(), strict=True)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("tie", [False, True])
def test_import_hf_then_recommend_equals_hf_generate(tmp_path, capsys, tie, hf_causal_lm, hf_constrained_generate):
    hf = hf_causal_lm("qwen3", levels=3, codes=8, seed=5, tie=tie)
    hf.save_pretrained(tmp_path / "hf")
    capsys.readouterr()  # HF's progress bar
    assert list((tmp_path / "hf").glob("*.safetensors"))
    catalog = random_catalog(150, levels=3, codes=8, seed=5)
    csv = _write_catalog_csv(tmp_path / "items.csv", catalog)
    code, out, err = _xgr(capsys, "import-hf", tmp_path / "hf", tmp_path / "gr", "--catalog", csv,
                          "--sid-offset", 8, "--levels", 3, "--codes", 8)
    assert (code, err) == (0, "") and str(tmp_path / "gr") in out

    prompt = torch.randint(2, hf.config.vocab_size, (12,), generator=torch.Generator().manual_seed(5)).tolist()
    code, out, err = _xgr(capsys, "recommend", tmp_path / "gr", "--engine", "reference", "--history-tokens",
                          " ".join(map(str, prompt)), "--beam-width", 8, "--k", 8)
    assert (code, err) == (0, "")
    items = json.loads(out)["items"]
    expected = hf_constrained_generate(hf, catalog, prompt, beam_width=8)
    assert [tuple(item["sid"]) for item in items] == [sid for sid, _ in expected]
    assert [item["item_id"] for item in items] == [catalog.items_of_sid(sid)[0] for sid, _ in expected]
    assert [item["score"] for item in items] == pytest.approx([score for _, score in expected], abs=1e-4)


def test_console_script_recommends_what_the_library_does(tiny_model_dir):
    xgr = Path(sys.executable).parent / "xgr"
    result = subprocess.run([xgr, "recommend", tiny_model_dir, "--history", "1000 1001", "--beam-width", "8",
                             "--k", "3", "--exclude-history"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    model = load_model_dir(tiny_model_dir)
    request = build_request(model.config.model, model.catalog, history_items=[1000, 1001], beam_width=8, top_k=3,
                            max_beam_width=8, exclude_history=True)
    expected = [item.to_json() for item in reference_beam_search(model.decoder, model.catalog, request)]
    assert json.loads(result.stdout) == {"items": expected}
    assert len(expected) == 3 and not {1000, 1001} & {item["item_id"] for item in expected}


def _recommend(capsys, model_dir, *args) -> dict:
    code, out, err = _xgr(capsys, "recommend", model_dir, *args)
    assert (code, err) == (0, ""), err
    return json.loads(out)


def test_recommend_takes_the_beam_from_the_models_config(tiny_model_dir, capsys):
    model = load_model_dir(tiny_model_dir)
    beam = model.config.beam
    assert (beam.beam_width, beam.top_k, model.config.serve.engine) == (16, 16, "fast")
    answer = _recommend(capsys, tiny_model_dir, "--history", "1000 1001")  # as the server: beam 16, top 16, fast
    request = build_request(model.config.model, model.catalog, history_items=[1000, 1001], beam_width=16, top_k=16,
                            max_beam_width=16, normalize=beam.normalize)
    expected = reference_beam_search(model.decoder, model.catalog, request)
    assert [item["item_id"] for item in answer["items"]] == [item.item_id for item in expected]
    assert "truncated" not in answer


def test_recommend_builds_the_fast_engine_for_the_beam_asked(tiny_model_dir, capsys):
    """#14: a model whose config says beam 16; --beam-width 32 builds the fast engine for 32."""
    args = ("--history", "1000 1001 1002", "--beam-width", 32, "--k", 32)
    fast = _recommend(capsys, tiny_model_dir, *args, "--engine", "fast")["items"]
    reference = _recommend(capsys, tiny_model_dir, *args, "--engine", "reference")["items"]
    assert len(fast) == 32 and [i["item_id"] for i in fast] == [i["item_id"] for i in reference]
    assert [i["score"] for i in fast] == pytest.approx([i["score"] for i in reference], abs=1e-5)


def test_recommend_reports_truncation_as_the_server(tiny_model_dir, capsys):
    history = " ".join(str(1000 + i) for i in range(40))  # 40 items of 3 tokens; the prompt holds 96 tokens
    answer = _recommend(capsys, tiny_model_dir, "--history", history, "--k", 3)
    assert answer["truncated"] == (40 - 32) * 3 and len(answer["items"]) == 3


def test_recommend_still_takes_the_old_spellings(tiny_model_dir, capsys):
    new = _recommend(capsys, tiny_model_dir, "--history", "1000 1001", "--k", 4, "--exclude", "1002")
    old = _recommend(capsys, tiny_model_dir, "--history-items", "1000 1001", "--top-k", 4, "--exclude-items", "1002")
    assert new == old and len(new["items"]) == 4
    code, out, _ = _xgr(capsys, "recommend", "--help")
    assert code == 0 and "--k K" in out and "--top-k" not in out and "--history-items" not in out


@pytest.mark.parametrize("args, message", [
    (["--history-tokens", "1 2", "--engine", "turbo"], "argument --engine: invalid choice: 'turbo'"),
    (["--history-tokens", "1 x 3"], "argument --history-tokens: expected integers separated by spaces; got '1 x 3'"),
    (["--history-tokens", "1 256"], "--history-tokens: tokens must be in [0, 256); got [256]"),
    (["--history", "1000 5"], "--history: unknown item id(s): [5]"),
    (["--history-tokens", "1", "--exclude", "7"], "--exclude: unknown item id(s): [7]"),
    (["--history-tokens", "1", "--k", "9"], "--k = 9 is more than --beam-width = 4: allowed 1..4"),
    (["--history-tokens", "1", "--beam-width", "0"], "argument --beam-width: expected an integer >= 1; got '0'"),
    (["--history-tokens", "1", "--normalize", "softmax"], "argument --normalize: invalid choice: 'softmax'"),
])
def test_recommend_refuses_bad_input_by_name(tiny_model_dir, capsys, args, message):
    code, out, err = _xgr(capsys, "recommend", tiny_model_dir, "--beam-width", 4, "--k", 2, *args)
    assert (code, out) == (2, "")
    assert message in err


@pytest.mark.parametrize("missing", ["config.yaml", "model.safetensors", "catalog.safetensors"])
def test_recommend_refuses_an_incomplete_model_dir(tiny_model_dir, capsys, missing):
    (tiny_model_dir / missing).unlink()
    code, _, err = _xgr(capsys, "recommend", tiny_model_dir, "--history-tokens", "1", "--beam-width", 4,
                        "--k", 2)
    assert code == 2 and f"{tiny_model_dir / missing}: missing" in err


def _hf_dir(path: Path, **config) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("config, csv_text, message", [
    ({"model_type": "gpt2"}, "item_id,code_0,code_1,code_2\n1,0,0,0\n",
     "model_type 'gpt2' is not supported; allowed ['llama', 'qwen2', 'qwen3']"),
    ({"model_type": "llama", "hidden_act": "gelu"}, "item_id,code_0,code_1,code_2\n1,0,0,0\n",
     "hidden_act 'gelu' is not supported; allowed 'silu'"),
    ({"model_type": "qwen3", "num_hidden_layers": 1, "hidden_size": 4, "num_attention_heads": 1,
      "intermediate_size": 8, "vocab_size": 40}, "item,code_0\n1,0\n", "header must be item_id"),
    ({"model_type": "qwen3", "num_hidden_layers": 1, "hidden_size": 4, "num_attention_heads": 1,
      "intermediate_size": 8, "vocab_size": 40}, "item_id,code_0,code_1,code_2\n1,0,0,0\n",
     "weights do not match"),
])
def test_import_hf_refuses_what_it_cannot_convert(tmp_path, capsys, config, csv_text, message):
    src = _hf_dir(tmp_path / "hf", **config)
    (tmp_path / "items.csv").write_text(csv_text)
    code, _, err = _xgr(capsys, "import-hf", src, tmp_path / "gr", "--catalog", tmp_path / "items.csv",
                        "--sid-offset", 8, "--levels", 3, "--codes", 8)
    assert code == 2 and message in err
    assert not (tmp_path / "gr").exists()


def test_import_hf_needs_config_json(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "items.csv").write_text("item_id,code_0,code_1,code_2\n1,0,0,0\n")
    code, _, err = _xgr(capsys, "import-hf", tmp_path / "hf", tmp_path / "gr", "--catalog", tmp_path / "items.csv",
                        "--sid-offset", 8, "--levels", 3, "--codes", 8)
    assert code == 2 and f"{tmp_path / 'hf' / 'config.json'}: missing" in err
