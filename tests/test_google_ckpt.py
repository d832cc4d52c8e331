"""Google-format BERT folders: name mapping, checkpoint round trip, validation, and keras-bert
against the NumPy reference on the tiny random folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fakes import random_hf_state_dict, tiny_config
from numpy_bert import bert_forward, encode

from core.weights import google_ckpt
from core.weights.google_ckpt import (
    MANIFEST_FILE,
    BertDirError,
    check_bert_dir,
    checkpoint_errors,
    expected_shapes,
    hf_config_to_google,
    hf_to_google,
    sanitize_vocab,
    vocab_from_tokenizer_json,
    write_bert_dir,
    write_checkpoint,
)

SENTENCES = ["这家店的菜味道很好", "服务态度不错，环境也干净", "价格有点贵", "下次还会再来吃"]


def test_hf_to_google_names_shapes_and_transposes():
    sd = random_hf_state_dict(50)
    sd["embeddings.position_ids"] = np.arange(64)[None]
    g = hf_to_google({f"bert.{k}" if k.startswith("enc") else k: v for k, v in sd.items()})
    shapes = expected_shapes(tiny_config(50))
    extra = {"bert/pooler/dense/kernel", "bert/pooler/dense/bias", "cls/predictions/output_bias"}
    extra |= {
        f"cls/predictions/transform/{n}"
        for n in ("dense/kernel", "dense/bias", "LayerNorm/gamma", "LayerNorm/beta")
    }
    extra |= {"cls/seq_relationship/output_weights", "cls/seq_relationship/output_bias"}
    assert set(g) == set(shapes) | extra
    for name, shape in shapes.items():
        assert g[name].shape == shape, name
    np.testing.assert_array_equal(
        g["bert/encoder/layer_1/intermediate/dense/kernel"],
        sd["encoder.layer.1.intermediate.dense.weight"].T,
    )
    np.testing.assert_array_equal(
        g["cls/seq_relationship/output_weights"], sd["cls.seq_relationship.weight"]
    )
    np.testing.assert_array_equal(
        g["bert/encoder/layer_0/output/LayerNorm/gamma"],
        sd["encoder.layer.0.output.LayerNorm.weight"],
    )


def test_hf_to_google_refuses_unknown_keys():
    with pytest.raises(ValueError, match="encoder.layer.0.attention.self.rotary.weight"):
        hf_to_google({"encoder.layer.0.attention.self.rotary.weight": np.zeros((2, 2))})


def test_hf_config_to_google():
    hf = dict(tiny_config(10), layer_norm_eps=1e-12, model_type="bert", hidden_act="gelu_new")
    assert hf_config_to_google(hf) == tiny_config(10)
    with pytest.raises(ValueError, match="hidden_act"):
        hf_config_to_google(dict(hf, hidden_act="silu"))
    with pytest.raises(ValueError, match="relative_key"):
        hf_config_to_google(dict(hf, position_embedding_type="relative_key"))


def test_vocab_from_tokenizer_json():
    obj = {
        "model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "好": 2, "[UNK]": 1}},
        "added_tokens": [{"id": 0, "content": "[PAD]"}, {"id": 3, "content": "[NEW]"}],
    }
    assert vocab_from_tokenizer_json(json.dumps(obj)) == ["[PAD]", "[UNK]", "好", "[NEW]"]
    gap = {"model": {"type": "WordPiece", "vocab": {"a": 0, "b": 2}}}
    with pytest.raises(ValueError, match=r"missing ids \[1\]"):
        vocab_from_tokenizer_json(gap)
    clash = {
        "model": {"type": "WordPiece", "vocab": {"a": 0}},
        "added_tokens": [{"id": 0, "content": "b"}],
    }
    with pytest.raises(ValueError, match="id 0 is both"):
        vocab_from_tokenizer_json(clash)
    with pytest.raises(ValueError, match="WordPiece"):
        vocab_from_tokenizer_json({"model": {"type": "BPE", "vocab": {}}})


def test_sanitize_vocab_keeps_ids_and_write_refuses_raw_tokens(tmp_path):
    tokens = ["[PAD]", "\u2028", "##\u2028", "好"]
    clean, changed = sanitize_vocab(tokens)
    assert clean == ["[PAD]", "[U+2028]", "##[U+2028]", "好"]
    assert changed == {1: ("\u2028", "[U+2028]"), 2: ("##\u2028", "##[U+2028]")}
    cfg, sd = tiny_config(4), hf_to_google(random_hf_state_dict(4))
    with pytest.raises(ValueError, match="sanitize_vocab"):
        write_bert_dir(tmp_path / "x", cfg, tokens, sd)
    assert not (tmp_path / "x").exists()


def test_checkpoint_round_trip_is_exact(tmp_path):
    import tensorflow as tf

    tensors = hf_to_google(random_hf_state_dict(30, seed=3))
    tensors["some/int_var"] = np.arange(-3, 3, dtype=np.int64).reshape(2, 3)
    write_checkpoint(tmp_path / "model.ckpt", tensors)
    listed = dict(tf.train.list_variables(str(tmp_path / "model.ckpt")))
    assert set(listed) == set(tensors)
    for name, value in tensors.items():
        got = tf.train.load_variable(str(tmp_path / "model.ckpt"), name)
        assert got.dtype == value.dtype and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value, err_msg=name)


def test_tiny_dir_is_valid(tiny_bert_dir, tiny_vocab):
    config = check_bert_dir(tiny_bert_dir)
    assert config["vocab_size"] == len(tiny_vocab) == 206
    lines = (tiny_bert_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines[:6] == ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert lines == tiny_vocab
    assert not [p for p in tiny_bert_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left


@pytest.fixture
def bert_copy(tiny_bert_dir, tmp_path):
    """A copy without MANIFEST.json (as a Google checkpoint of one's own): the checks below edit
    its files, which the manifest would report first."""
    copy = shutil.copytree(tiny_bert_dir, tmp_path / "bert")
    (copy / MANIFEST_FILE).unlink()
    return copy


@pytest.mark.parametrize(
    "missing",
    [
        "vocab.txt",
        "bert_config.json",
        "bert_model.ckpt.index",
        "bert_model.ckpt.data-00000-of-00001",
    ],
)
def test_check_names_missing_file(bert_copy, missing):
    (bert_copy / missing).unlink()
    with pytest.raises(BertDirError, match=missing) as err:
        check_bert_dir(bert_copy)
    # A folder of one's own: the default folder's rebuild would leave this one broken.
    assert str(err.value).endswith(
        f"copy or convert {bert_copy} again from where it came from, or point bert_dir at "
        "another folder"
    )
    assert "core.weights" not in str(err.value)


def test_check_vocab_disagreeing_with_config(bert_copy):
    with open(bert_copy / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("多余\n")
    with pytest.raises(BertDirError, match=r"vocab\.txt: expected 206 lines .*found 207 lines"):
        check_bert_dir(bert_copy, read_checkpoint=False)


def test_check_duplicate_vocab_line(bert_copy):
    lines = (bert_copy / "vocab.txt").read_text(encoding="utf-8").splitlines()
    lines[10] = lines[8]
    (bert_copy / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BertDirError, match="first on line 9"):
        check_bert_dir(bert_copy, read_checkpoint=False)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"hidden_size": 48}, r"word_embeddings of shape \(206, 48\).*found shape \(206, 32\)"),
        ({"num_hidden_layers": 3}, "layer_2.* no such variable"),
        ({"max_position_embeddings": 128}, r"position_embeddings of shape \(128, 32\)"),
    ],
)
def test_check_config_disagreeing_with_checkpoint(bert_copy, change, message):
    cfg_path = bert_copy / "bert_config.json"
    cfg_path.write_text(json.dumps(dict(json.loads(cfg_path.read_text()), **change)))
    with pytest.raises(BertDirError, match=message) as err:
        check_bert_dir(bert_copy)
    assert "bert_model.ckpt.index" in str(err.value)


def test_check_vocab_size_disagreeing_with_checkpoint(bert_copy):
    cfg_path = bert_copy / "bert_config.json"
    cfg_path.write_text(json.dumps(dict(json.loads(cfg_path.read_text()), vocab_size=205)))
    lines = (bert_copy / "vocab.txt").read_text(encoding="utf-8").splitlines()[:205]
    (bert_copy / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BertDirError, match=r"word_embeddings of shape \(205, 32\).*\(206, 32\)"):
        check_bert_dir(bert_copy)


def test_check_bad_config(bert_copy):
    cfg_path = bert_copy / "bert_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({k: v for k, v in cfg.items() if k != "intermediate_size"}))
    with pytest.raises(BertDirError, match=r"\['intermediate_size'\] missing"):
        check_bert_dir(bert_copy)
    cfg_path.write_text("{not json")
    with pytest.raises(BertDirError, match="bert_config.json: expected a JSON object"):
        check_bert_dir(bert_copy)


# ---------------------------------------------------------------- damaged files


DATA_FILE = "bert_model.ckpt.data-00000-of-00001"


@pytest.fixture
def written_copy(tiny_bert_dir, tmp_path):
    """A copy of the tiny folder with its MANIFEST.json, as if written there with ``rebuild``."""
    copy = shutil.copytree(tiny_bert_dir, tmp_path / "bert")
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest.update(rebuild="make-it --again", folder=str(copy))
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    return copy


def test_manifest_lists_every_file_written(tiny_bert_dir):
    import hashlib

    manifest = json.loads((tiny_bert_dir / MANIFEST_FILE).read_text())
    names = sorted(p.name for p in tiny_bert_dir.iterdir() if p.name != MANIFEST_FILE)
    assert sorted(manifest["files"]) == names and DATA_FILE in names
    for name, recorded in manifest["files"].items():
        data = (tiny_bert_dir / name).read_bytes()
        assert recorded == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_truncated_file_is_named_with_the_command_that_rebuilds_it(written_copy):
    data = written_copy / DATA_FILE
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[:1000])
    for read_checkpoint in (False, True):  # sizes are checked on every check
        with pytest.raises(BertDirError) as err:
            check_bert_dir(written_copy, read_checkpoint=read_checkpoint)
        assert str(err.value) == (
            f"{data}: expected {size:,} bytes (as written, MANIFEST.json), found 1,000: the file "
            "is truncated or damaged; rebuild it: make-it --again"
        )


def test_damaged_file_of_the_same_size_is_found_before_loading(written_copy):
    data = written_copy / DATA_FILE
    raw = bytearray(data.read_bytes())
    raw[500] ^= 0xFF
    data.write_bytes(bytes(raw))
    check_bert_dir(written_copy, read_checkpoint=False)  # sizes only: cheap, no TensorFlow
    with pytest.raises(
        BertDirError,
        match=r"expected sha256 [0-9a-f]{12}… \(as written, "
        r"MANIFEST\.json\), found [0-9a-f]{12}…: the file is damaged; rebuild it: "
        r"make-it --again",
    ) as err:
        check_bert_dir(written_copy)  # before the weights load: sha256 too
    assert str(err.value).startswith(f"{data}: ")


def test_missing_file_listed_in_the_manifest(written_copy):
    (written_copy / "checkpoint").unlink()
    with pytest.raises(BertDirError) as err:
        check_bert_dir(written_copy, read_checkpoint=False)
    assert str(err.value) == (
        f"{written_copy / 'checkpoint'}: expected this file (listed in MANIFEST.json), found it "
        "missing; rebuild it: make-it --again"
    )


def truncated(folder: Path) -> str:
    """The message check_bert_dir gives for ``folder`` with its data file cut short."""
    data = folder / DATA_FILE
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(BertDirError) as err:
        check_bert_dir(folder, read_checkpoint=False)
    return str(err.value)


def set_manifest(bert_dir: Path, **values) -> None:
    """Rewrite ``bert_dir``'s MANIFEST.json with ``values`` (None: the key removed)."""
    manifest = json.loads((bert_dir / MANIFEST_FILE).read_text())
    manifest.update(values)
    text = json.dumps({k: v for k, v in manifest.items() if v is not None})
    (bert_dir / MANIFEST_FILE).write_text(text)


def test_manifest_records_where_the_folder_was_written(tiny_bert_dir):
    manifest = json.loads((tiny_bert_dir / MANIFEST_FILE).read_text())
    assert Path(manifest["folder"]) == tiny_bert_dir.resolve()


def test_a_copy_is_told_where_to_copy_from_not_the_originals_rebuild(tmp_path, tiny_bert_dir):
    """Issue #28: a damaged copy of m3e-small was told `python -m core.weights --force`, which
    rebuilds pretrained/m3e-small and leaves the copy broken."""
    copy = shutil.copytree(tiny_bert_dir, tmp_path / "copy")
    set_manifest(copy, rebuild="python -m core.weights --force", folder="pretrained/m3e-small")
    assert truncated(copy).endswith(
        "the file is truncated or damaged; copy it again from pretrained/m3e-small "
        "(`python -m core.weights --force` makes that one), or point bert_dir at another folder"
    )


def test_a_folder_written_in_place_keeps_its_rebuild(tmp_path, tiny_bert_dir):
    folder = shutil.copytree(tiny_bert_dir, tmp_path / "out")
    set_manifest(
        folder, rebuild=f"python -m core.weights --force --out {folder}", folder=str(folder)
    )
    assert truncated(folder).endswith(f"rebuild it: python -m core.weights --force --out {folder}")


@pytest.mark.parametrize(
    "rebuild, fits",
    [
        ("python -m core.weights --force --out {d}", True),  # m3e.ensure_m3e_small --out
        ("delete {d} and run stage 0 again: …", True),  # core.training.mlm.pretrain
        ("python -m core.weights --force", False),  # the default folder's, on a copy of it
        ("python -m core.weights --force --out {d}2", False),
    ],
)
def test_a_manifest_without_folder_keeps_a_rebuild_only_if_it_names_the_folder(
    tmp_path, tiny_bert_dir, rebuild, fits
):
    """Manifests written before they recorded ``folder``."""
    d = shutil.copytree(tiny_bert_dir, tmp_path / "bert")
    set_manifest(d, rebuild=rebuild.format(d=d), folder=None)
    message = truncated(d)
    if fits:
        assert message.endswith(f"rebuild it: {rebuild.format(d=d)}")
    else:
        assert message.endswith(
            f"copy or convert {d} again from where it came from, or point "
            "bert_dir at another folder"
        )


def test_the_default_folder_gets_its_rebuild(tmp_path, tiny_bert_dir, monkeypatch):
    """With or without a manifest (a folder converted before manifests existed)."""
    from core.config import DEFAULTS

    default = shutil.copytree(tiny_bert_dir, tmp_path / "m3e-small")
    monkeypatch.setattr(DEFAULTS, "bert_dir", default.resolve())
    set_manifest(default, rebuild="python -m core.weights --force", folder=None)
    assert truncated(default).endswith("rebuild it: python -m core.weights --force")
    (default / MANIFEST_FILE).unlink()
    (default / "vocab.txt").unlink()
    with pytest.raises(BertDirError) as err:
        check_bert_dir(default, read_checkpoint=False)
    assert str(err.value) == (
        f"{default / 'vocab.txt'}: expected this file, found it missing; rebuild it: "
        "python -m core.weights --force"
    )


def test_unreadable_manifest(written_copy):
    (written_copy / MANIFEST_FILE).write_text("{")
    with pytest.raises(BertDirError, match="MANIFEST.json: expected a JSON object"):
        check_bert_dir(written_copy, read_checkpoint=False)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_checkpoint_reader_errors_name_the_data_file(bert_copy, damage):
    """Without a manifest the folder loads as it is; TensorFlow's reader finds the damage."""
    import tensorflow as tf

    data = bert_copy / DATA_FILE
    raw = bytearray(data.read_bytes())
    if damage == "flip":
        raw[500] ^= 0xFF  # TensorFlow's own per-tensor checksum catches this
    data.write_bytes(bytes(raw if damage == "flip" else raw[:1000]))
    check_bert_dir(bert_copy)  # index and shapes are fine
    found = "IndexError: Read less bytes" if damage == "truncate" else "OpError: .*Checksum"
    with pytest.raises(BertDirError, match=f"expected a readable checkpoint, found {found}") as err:
        with checkpoint_errors(bert_copy):
            reader = tf.train.load_checkpoint(str(bert_copy / "bert_model.ckpt"))
            for name in reader.get_variable_to_shape_map():
                reader.get_tensor(name)
    message = str(err.value)
    assert message.startswith(f"{data}: ") and "truncated or damaged" in message
    assert message.endswith(
        f"copy or convert {bert_copy} again from where it came from, or point "
        "bert_dir at another folder"
    )


def test_write_is_atomic(tmp_path, tiny_vocab, monkeypatch):
    cfg = tiny_config(len(tiny_vocab))
    tensors = hf_to_google(random_hf_state_dict(len(tiny_vocab)))
    out = write_bert_dir(tmp_path / "bert", cfg, tiny_vocab, tensors)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(prefix, _tensors):
        (prefix.parent / "bert_model.ckpt.index").write_bytes(b"half")
        raise KeyboardInterrupt  # even an interrupt leaves nothing half-written behind

    monkeypatch.setattr(google_ckpt, "write_checkpoint", crash)
    for target in (out, tmp_path / "fresh"):
        with pytest.raises(KeyboardInterrupt):
            write_bert_dir(target, cfg, tiny_vocab, tensors)
    assert not (tmp_path / "fresh").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert"]


def _keras_bert_last_layer(bert_dir, ids, segs, training=False):
    import keras_bert
    import tensorflow as tf

    model = keras_bert.load_trained_model_from_checkpoint(
        str(bert_dir / "bert_config.json"),
        str(bert_dir / "bert_model.ckpt"),
        training=training,
        seq_len=None,
    )
    return model([tf.constant(ids), tf.constant(segs)], training=False).numpy()


def test_keras_bert_matches_numpy_on_tiny_dir(tiny_bert_dir, tiny_vocab):
    ids, segs = encode(SENTENCES, tiny_vocab)
    assert (ids == 2).sum() == 1  # only "，" is outside the tiny vocab: one [UNK]
    out = _keras_bert_last_layer(tiny_bert_dir, ids, segs)
    sd = random_hf_state_dict(len(tiny_vocab))  # the weights write_random_bert_dir used
    real = ids != 0
    # keras-bert's gelu is the tanh form and its LayerNorm epsilon 1e-14: the reference with the
    # same choices checks the conversion itself; the exact-erf reference bounds the difference.
    same = bert_forward(sd, ids, segs, heads=2, eps=1e-14, gelu_form="tanh")
    exact = bert_forward(sd, ids, segs, heads=2, eps=1e-12, gelu_form="erf")
    diff_same, diff_exact = np.abs(out - same)[real].max(), np.abs(out - exact)[real].max()
    print(f"tiny: max|keras-numpy(tanh)|={diff_same:.2e}, max|keras-numpy(erf)|={diff_exact:.2e}")
    assert diff_same < 1e-4 and diff_exact < 1e-4
    # Padding is masked: each sentence alone gives the same vectors as inside the padded batch.
    for r, sentence in enumerate(SENTENCES):
        one, one_seg = encode([sentence], tiny_vocab)
        alone = bert_forward(sd, one, one_seg, heads=2, eps=1e-14, gelu_form="tanh")[0]
        assert np.abs(alone - out[r, : one.shape[1]]).max() < 1e-4


def test_tiny_dir_loads_in_training_mode(tiny_bert_dir):
    import keras_bert

    model = keras_bert.load_trained_model_from_checkpoint(
        str(tiny_bert_dir / "bert_config.json"),
        str(tiny_bert_dir / "bert_model.ckpt"),
        training=True,
        seq_len=16,
    )
    assert model.get_layer("MLM-Sim").get_weights()[0].shape == (206,)
