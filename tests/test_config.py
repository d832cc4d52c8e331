"""core.config: path resolution, range checks, the fold check and the run-folder check."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ROOT, ConfigError, Settings, from_values, resolve
from core.parameters import check_injected, from_notebook, parameters_source


def test_root_is_the_repository():
    assert (ROOT / "core" / "config.py").is_file()
    assert (ROOT / "pyproject.toml").is_file()


def test_relative_paths_resolve_against_root():
    s = Settings(train_path="data/other.txt", bert_dir=Path("pretrained/x"), output_dir="out")
    assert s.train_path == ROOT / "data" / "other.txt"
    assert s.bert_dir == ROOT / "pretrained" / "x"
    assert s.output_dir == ROOT / "out"
    for name in ("train_path", "test_path", "bert_dir", "output_dir"):
        value = getattr(s, name)
        assert isinstance(value, Path) and value.is_absolute(), name
    assert Settings().test_path == ROOT / "data" / "test_handout.txt"


def test_absolute_paths_are_kept(tmp_path):
    s = Settings(train_path=tmp_path / "train.txt", output_dir=str(tmp_path))
    assert s.train_path == tmp_path.resolve() / "train.txt"
    assert s.output_dir == tmp_path.resolve()


def test_dot_dot_is_normalised():
    assert Settings(train_path="outputs/../data/x.txt").train_path == ROOT / "data" / "x.txt"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"maxlen": 0}, "maxlen"),
        ({"stage1_batch_size": 0}, "stage1_batch_size"),
        ({"predict_batch_size": -1}, "predict_batch_size"),
        ({"stage1_epochs": 0}, "stage1_epochs"),
        ({"n_folds": 1}, "n_folds"),
        ({"n_folds": 0}, "n_folds"),
        ({"stage1_lr": 0}, "stage1_lr"),
        ({"stage1_lr": 0.0}, "stage1_lr"),
        ({"stage1_lr": -1e-5}, "stage1_lr"),
        ({"stage1_lr": 1.0}, "stage1_lr"),
        ({"stage1_lr": float("nan")}, "stage1_lr"),
        ({"stage1_schedule": "linear"}, "stage1_schedule"),
        ({"stage1_warmup": 1.0}, "stage1_warmup"),
        ({"stage1_warmup": -0.1}, "stage1_warmup"),
        ({"stage1_warmup": True}, "stage1_warmup"),
        ({"stage1_warmup": "0.1x"}, "stage1_warmup"),
        ({"stage1_layer_decay": 0}, "stage1_layer_decay"),
        ({"stage1_layer_decay": 1.2}, "stage1_layer_decay"),
        ({"stage1_layer_decay": False}, "stage1_layer_decay"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"train_seed": -1}, "train_seed"),
        ({"train_seed": "seven"}, "train_seed"),
        ({"train_seed": True}, "train_seed"),
    ],
)
def test_invalid_settings_name_the_setting(kwargs, name):
    with pytest.raises(ConfigError) as info:
        Settings(**kwargs)
    assert f"{name}=" in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_smallest_valid_settings():
    s = Settings(maxlen=1, stage1_batch_size=1, n_folds=2, stage1_lr=1e-9, stage1_epochs=1)
    assert (s.maxlen, s.n_folds) == (1, 2)


# ------------------------------------------------------------------ check_fold


@pytest.mark.parametrize("n_folds", [2, 5])
def test_check_fold_accepts_every_fold(n_folds):
    s = Settings(n_folds=n_folds)
    assert [s.check_fold(k) for k in range(n_folds)] == list(range(n_folds))


@pytest.mark.parametrize("fold", [-1, 5, 6, 1.5, True, False, "0", None])
def test_check_fold_rejects(fold):
    s = Settings(n_folds=5)
    with pytest.raises(ConfigError) as info:
        s.check_fold(fold)
    message = str(info.value)
    assert f"fold={fold!r}" in message
    assert "0..4" in message


def test_check_fold_range_follows_n_folds():
    s = Settings(n_folds=3)
    with pytest.raises(ConfigError, match=r"0\.\.2"):
        s.check_fold(3)


# ------------------------------------------------------------------ run_path


def test_run_path_accepts_a_folder_inside_output_dir():
    s = Settings()
    assert s.run_path("outputs/runs/my-run") == ROOT / "outputs" / "runs" / "my-run"
    assert s.run_path(ROOT / "outputs" / "a") == ROOT / "outputs" / "a"
    assert s.run_path("outputs/runs/../b") == ROOT / "outputs" / "b"


def test_run_path_with_another_output_dir(tmp_path):
    s = Settings(output_dir=tmp_path)
    assert s.run_path(tmp_path / "run1") == tmp_path.resolve() / "run1"
    with pytest.raises(ConfigError, match="run_dir"):
        s.run_path("outputs/runs/my-run")  # inside the default outputs, not this one


@pytest.mark.parametrize("run_dir", ["/tmp/x", "outputs/../x", "..", "outputs/../../x", "data"])
def test_run_path_rejects_folders_outside_output_dir(run_dir):
    s = Settings()
    with pytest.raises(ConfigError) as info:
        s.run_path(run_dir)
    message = str(info.value)
    assert f"run_dir={run_dir!r}" in message
    assert str(s.output_dir) in message


def test_run_path_rejects_a_sibling_sharing_the_prefix():
    # "outputs-old" starts with the same characters as "outputs" but is not inside it.
    with pytest.raises(ConfigError, match="run_dir"):
        Settings().run_path("outputs-old/run")


# ------------------------------------------------------------------ resolve


@pytest.mark.parametrize("bad", ["", "   ", "a\x00b", "\x00"])
def test_resolve_rejects_empty_and_nul(bad):
    with pytest.raises(ConfigError, match="non-empty"):
        resolve(bad)


def test_resolve_relative_and_absolute(tmp_path):
    assert resolve("core/config.py") == ROOT / "core" / "config.py"
    assert resolve(tmp_path) == tmp_path.resolve()


def test_settings_reject_nul_in_a_path():
    with pytest.raises(ConfigError):
        Settings(train_path="data/\x00train.txt")


def test_training_seed_is_seed_unless_train_seed_is_set():
    assert Settings(seed=11).training_seed == 11
    assert Settings(seed=11, train_seed=0).training_seed == 0
    assert Settings(seed=11, train_seed=5).seed == 11  # the folds do not move


# ------------------------------------------------------------------ one source of defaults


def test_defaults_are_the_measured_method():
    s = Settings()
    assert (s.stage0_epochs, s.stage1_batch_size, s.stage1_lr, s.stage1_schedule) == (
        3,
        64,
        1.4e-4,
        "cosine",
    )
    assert (s.stage2_loss, s.stage2_lr) == ("pairwise_auc", 1e-4)


@pytest.mark.parametrize(
    "name, value",
    [
        ("stage0_lr", 5),
        ("stage2_loss", "f1"),
        ("stage1_strategy", "tpu"),
        ("stage0_epochs", -1),
        ("stage1_jit_compile", "yes"),
        ("stage0_mask_rate", 1.0),
        ("stage2_batch_size", 0),
    ],
)
def test_every_stage_is_checked_when_settings_are_made(name, value):
    with pytest.raises(ConfigError, match=f"setting {name}="):
        Settings(**{name: value})


def test_numbers_given_as_text_are_read():
    # YAML reads 1e-5 (no dot) as text; papermill -r passes text.
    assert Settings(stage1_lr="1e-5", n_folds="3").stage1_lr == 1e-5


def test_from_values_accepts_dotted_names_and_refuses_unknown_ones():
    from core.config import from_values

    assert from_values({"stage1.lr": 3e-5}, "x").stage1_lr == 3e-5
    with pytest.raises(ConfigError, match=r"configs/x.yaml: unknown setting 'stage1_lrr'"):
        from_values({"stage1_lrr": 3e-5}, "configs/x.yaml")


def notebook_cells(*injected: str) -> list[str]:
    """A kernel's ``In`` after papermill ran a notebook's parameters cell and its injected cell."""
    own = "fold = 0  # which fold\nrun_dir = None  # where\n\n"
    return ["", own + parameters_source(), "\n".join(["# Parameters", *injected])]


@pytest.mark.parametrize(
    "name, closest",
    [("stage1_lrr", "stage1_lr"), ("fodl", "fold"), ("rundir", "run_dir"), ("zzz", None)],
)
def test_a_notebook_refuses_a_parameter_it_does_not_know(name, closest):
    """papermill only warns about an unknown -p name or -f key, and the notebook would train with
    the default: from_notebook refuses it, naming the closest known one (issue #28)."""
    cells = notebook_cells("fold = 1", f"{name} = 0.1")
    with pytest.raises(ConfigError) as info:
        from_notebook({"In": cells, "fold": 1, name: 0.1})
    hint = f" (did you mean {closest!r}?)" if closest else ""
    assert str(info.value) == (
        f"notebook parameters: unknown parameter {name!r}{hint}; expected one of this "
        "notebook's own (fold, run_dir) or a setting of core.config.Settings — fix the -p name "
        "or the key in the -f file"
    )


def test_a_notebook_takes_its_own_parameters_and_every_setting():
    cells = notebook_cells("fold = 2", "run_dir = 'outputs/runs/x'", "stage1_lr = 3e-05")
    assert from_notebook({"In": cells, "stage1_lr": 3e-05}).stage1_lr == 3e-05
    check_injected(cells[:2])  # no injected cell (JupyterLab): nothing was passed
    check_injected([])


def test_unknown_settings_elsewhere_name_the_closest_too():
    with pytest.raises(ConfigError, match=r"^--set: unknown setting 'stage1_lrr' \(did you mean "):
        from_values({"stage1_lrr": 1e-5}, "--set")


def test_config_files_resolve_and_differ_from_the_defaults_only_where_they_say(tmp_path):
    from core.config import from_values, read_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        values = read_config(path)
        settings = from_values(values, path.name)
        assert settings.changed().keys() == values.keys(), path.name
    reference = from_values(read_config(ROOT / "configs" / "reference.yaml"), "reference")
    assert (reference.stage0_epochs, reference.stage1_batch_size, reference.stage1_lr) == (
        0,
        16,
        1e-5,
    )
    assert (reference.stage1_schedule, reference.stage2_loss, reference.stage2_lr) == (
        "constant",
        "soft_f1",
        1e-7,
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1_lr: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="setting stage1_lr=5"):
        read_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        read_config(tmp_path / "missing.yaml")


def test_stage_views_are_unprefixed():
    s = Settings()
    assert s.stage("stage2") == {
        "loss": "pairwise_auc",
        "lr": 1e-4,
        "epochs": 4,
        "patience": 1,
        "batch_size": 16,
    }
    assert "train_path" in s.stage("data") and "stage1_lr" not in s.stage("data")
