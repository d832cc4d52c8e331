"""Every setting of a run, with its default, its check and its help: the one source of defaults.

``Settings`` is flat, the way papermill passes parameters: the data and folds unprefixed, each
stage's own settings prefixed (``stage1_lr``). The notebooks' parameters cells (core.parameters),
the main job's ``--set``/``--config`` and the functions that train all read these fields; a test
fails when a parameters cell drifts from them. The defaults are the best measured method
(docs/method.md); ``configs/*.yaml`` hold named variants, the reference method among them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The suite's notebooks by step; error messages name them in the command that fixes the error.
NOTEBOOKS = {
    "stage0": "notebooks/00_pretrain.ipynb",
    "eda": "notebooks/01_eda.ipynb",
    "stage1": "notebooks/02_cv.ipynb",
    "stage2": "notebooks/03_f1_refine.ipynb",
    "students": "notebooks/02b_students.ipynb",
    "distill": "notebooks/06_distill.ipynb",  # one fold's distilled copy (-p fold K)
    "distilled": "notebooks/06_distill.ipynb",  # the model for serving, on every row
    "ensemble": "notebooks/04_ensemble.ipynb",
    "errors": "notebooks/05_errors.ipynb",
}
# Written last into stage 0's encoder folder (core.training.mlm): it marks the folder done.
PRETRAIN_FILE = "PRETRAIN.json"
# A run folder's resolved settings, as a papermill parameters file (-f) and --config file.
CONFIG_FILE = "config.yaml"

# Stage 1 learning-rate schedules (core.model.optimizer.learning_rate).
SCHEDULES = ("constant", "cosine")
LOSSES = ("soft_f1", "pairwise_auc", "bce")  # stage 2 head losses (core.model.losses)
STRATEGIES = ("default", "mirrored", "multiworker")  # core.model.strategy
PRECISIONS = ("float32", "bfloat16", "float16", "auto")  # core.model.precision
STUDENT_TARGETS = ("soft", "hard")  # the students' pseudo-labels (core.training.students)
# The stages trained fold by fold: stages 1 and 2 (what serving computes), and the optional ones
# that stage 1 teaches, blended by the ensemble beside them.
MAIN_STAGES = ("stage1", "stage2")
EXTRA_STAGES = ("students", "distill")
FOLDED_STAGES = (*MAIN_STAGES, *EXTRA_STAGES)
# The setting that turns each optional section on: while it is off, its other settings change
# nothing (no key, no run identity holds them).
SWITCHES = {"stage0": "stage0_epochs", "students": "students_enabled", "distill": "distill_enabled"}
# Settings that name files: keys hold the files' contents, never these paths (core.runs.steps).
PATHS = ("train_path", "test_path", "bert_dir", "output_dir")


class ConfigError(ValueError):
    """A setting is out of range or names a path it may not use."""


def _setting(default, help: str, check: str, *args, section: str = "data"):
    """A field with its check (``check``: int, number, choice, bool, path, seed) and help text."""
    metadata = {"help": help, "check": (check, *args), "section": section}
    if isinstance(default, list):  # a mutable default: each Settings gets its own copy
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _stage(n: int):
    return lambda default, help, check, *args: _setting(
        default, help, check, *args, section=f"stage{n}"
    )


_s0, _s1, _s2 = _stage(0), _stage(1), _stage(2)


def _students(default, help, check, *args):
    return _setting(default, help, check, *args, section="students")


def _distill(default, help, check, *args):
    return _setting(default, help, check, *args, section="distill")


def _ensemble(default, help, check, *args):
    return _setting(default, help, check, *args, section="ensemble")


@dataclass
class Settings:
    """Every knob of a run. Relative paths are resolved against the repository root."""

    # The data, the encoder and the folds: shared by every step.
    train_path: Path = _setting(
        Path("data/train_shuffle.txt"), "labelled file: 'label<TAB>text' rows, or a CSV", "path"
    )
    test_path: Path = _setting(
        Path("data/test_handout.txt"),
        "unlabelled file to score; a row's index from 0 is its ID",
        "path",
    )
    bert_dir: Path = _setting(
        Path("pretrained/m3e-small"),
        "BERT folder to start from: Google format, or Hugging Face (converted once)",
        "path",
    )
    output_dir: Path = _setting(Path("outputs"), "every run writes under this folder", "path")
    maxlen: int = _setting(20, "characters kept per sentence ([CLS] and [SEP] on top)", "int", 1)
    n_folds: int = _setting(5, "folds of the shuffled KFold split by seed", "int", 2)
    seed: int = _setting(2020, "the fold split; also training's seed unless train_seed", "int", 0)
    train_seed: int | None = _setting(
        None, "training randomness on the same folds (None: seed); for seed ensembles", "seed"
    )
    predict_batch_size: int = _setting(
        256, "rows per prediction batch (its padding moves predictions' last bits)", "int", 1
    )
    precision: str = _setting(
        "auto",
        "float32, bfloat16, float16 (mixed), auto (16 bits where fast here)",
        "choice",
        PRECISIONS,
    )
    # Stage 0: within-task masked-LM training of the encoder on the train + test sentences.
    stage0_epochs: int = _s0(
        3, "passes over all sentences with fresh masks (0: no stage 0)", "int", 0
    )
    stage0_lr: float = _s0(1e-4, "Adam learning rate", "number", 0, 1)
    stage0_batch_size: int = _s0(32, "sentences per step", "int", 1)
    stage0_mask_rate: float = _s0(
        0.15, "share of each sentence's characters to predict", "number", 0, 1
    )
    stage0_jit_compile: bool = _s0(True, "XLA-compile the training step", "bool")
    stage0_seed: int | None = _s0(
        None, "masks and initial weights (None: seed; train_seed does not change it)", "seed"
    )
    # Stage 1: fine-tune encoder + head with binary cross-entropy, one fold at a time.
    stage1_epochs: int = _s1(
        3, "at most this many epochs (early stopping on validation AUC)", "int", 1
    )
    stage1_patience: int = _s1(
        1, "epochs without a better validation AUC before stopping", "int", 1
    )
    stage1_batch_size: int = _s1(64, "training batch size", "int", 1)
    stage1_lr: float = _s1(1.4e-4, "Adam learning rate (the peak under a schedule)", "number", 0, 1)
    stage1_schedule: str = _s1(
        "cosine", "constant, or cosine: warm-up then decay to 0", "choice", SCHEDULES
    )
    stage1_warmup: float = _s1(
        0.06, "share of the steps spent warming up (cosine)", "number", 0, 1, "[)"
    )
    stage1_layer_decay: float = _s1(
        1.0,
        "each encoder layer learns this much slower than the one above (1: off)",
        "number",
        0,
        1,
        "(]",
    )
    stage1_group_by_length: bool = _s1(True, "batch sentences of similar length together", "bool")
    stage1_pad_multiple: int = _s1(4, "round batch widths up to a multiple of this (XLA)", "int", 1)
    stage1_jit_compile: bool = _s1(True, "XLA-compile the training step", "bool")
    stage1_strategy: str = _s1(
        "default", "tf.distribute strategy (mirrored: several GPUs)", "choice", STRATEGIES
    )
    # Stage 2: freeze the encoder, train the head alone on its cached outputs.
    stage2_loss: str = _s2("pairwise_auc", "head loss (the reference: soft_f1)", "choice", LOSSES)
    stage2_lr: float = _s2(1e-4, "Adam learning rate of the head", "number", 0, 1)
    stage2_epochs: int = _s2(
        4, "at most this many epochs (early stopping on validation AUC)", "int", 1
    )
    stage2_patience: int = _s2(
        1, "epochs without a better validation AUC before stopping", "int", 1
    )
    stage2_batch_size: int = _s2(16, "head training batch size", "int", 1)
    # Students: per fold, stage 1 again on the fold's training rows plus the test sentences
    # pseudo-labelled by that fold's stage-1 model (which never saw the fold's rows).
    students_enabled: bool = _students(False, "train a pseudo-labelled student per fold", "bool")
    students_target: str = _students(
        "soft",
        "soft: stage 1's test scores; hard: 0/1 at students_threshold",
        "choice",
        STUDENT_TARGETS,
    )
    students_threshold: float = _students(
        0.5, "hard targets: a test score at or above this is a 1", "number", 0, 1
    )
    students_weight: float = _students(
        1.0,
        "weight of a pseudo-labelled row in the loss (a labelled row: 1)",
        "number",
        0,
        10,
        "(]",
    )
    students_epochs: int | None = _students(
        None, "at most this many epochs (None: stage1_epochs)", "maybe", "int", 1
    )
    students_lr: float | None = _students(
        None, "peak Adam learning rate (None: stage1_lr)", "maybe", "number", 0, 1
    )
    # Distillation: one model for serving, taught by the run's ensemble (core.training.distill).
    distill_enabled: bool = _distill(
        False, "distil the ensemble into one model for serving (06_distill)", "bool"
    )
    distill_label_weight: float = _distill(
        0.5,
        "a training row's target: this share its label, the rest the teacher's",
        "number",
        0,
        1,
        "[]",
    )
    distill_layers: int | None = _distill(
        None, "encoder layers the distilled model keeps (None: all)", "maybe", "int", 1
    )
    distill_epochs: int | None = _distill(
        None, "at most this many epochs (None: stage1_epochs)", "maybe", "int", 1
    )
    distill_lr: float | None = _distill(
        None, "peak Adam learning rate (None: stage1_lr)", "maybe", "number", 0, 1
    )
    # The ensemble: one run's stages, or a seed ensemble of several runs.
    blend_seeds: list[int] = _ensemble(
        [],
        "other training seeds of this method to blend with it (a seed ensemble; each is a run)",
        "seeds",
    )
    blend_runs: list[str] = _ensemble(
        [],
        "finished runs (folders or names under output_dir/runs) to blend with this one",
        "names",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(f, getattr(self, f.name)))
        if self.training_seed in self.blend_seeds:
            raise ConfigError(
                f"setting blend_seeds={self.blend_seeds}: {self.training_seed} is this run's own "
                "training seed; list only the other seeds to blend with it"
            )

    @property
    def training_seed(self) -> int:
        """The seed of training's randomness: ``train_seed``, or ``seed`` when that is None."""
        return self.seed if self.train_seed is None else self.train_seed

    @property
    def stage0_seed_value(self) -> int:
        """The seed of stage 0's masks and initial weights: ``stage0_seed``, or ``seed``."""
        return self.seed if self.stage0_seed is None else self.stage0_seed

    @property
    def uses_stage0(self) -> bool:
        return self.stage0_epochs > 0

    def is_on(self, section: str) -> bool:
        """Whether a section's settings act: always, but for the ``SWITCHES`` sections."""
        return section not in SWITCHES or bool(getattr(self, SWITCHES[section]))

    def acting(self) -> dict:
        """Every setting that acts on a result here, as ``values()`` shows it: those of sections
        that are off are left out (their switch stays), and the students' threshold with soft
        targets (it thresholds hard ones only)."""
        out = {}
        for f in dataclasses.fields(self):
            section = f.metadata["section"]
            if not self.is_on(section) and f.name != SWITCHES[section]:
                continue
            if f.name == "students_threshold" and self.students_target != "hard":
                continue
            out[f.name] = getattr(self, f.name)
        return {k: show(v) if isinstance(v, Path) else v for k, v in out.items()}

    @property
    def students_epochs_value(self) -> int:
        """The students' epochs: ``students_epochs``, or ``stage1_epochs`` when that is None."""
        return self.stage1_epochs if self.students_epochs is None else self.students_epochs

    @property
    def students_lr_value(self) -> float:
        """The students' peak learning rate: ``students_lr``, or ``stage1_lr`` when None."""
        return self.stage1_lr if self.students_lr is None else self.students_lr

    @property
    def distill_epochs_value(self) -> int:
        """The distilled models' epochs: ``distill_epochs``, or ``stage1_epochs`` when None."""
        return self.stage1_epochs if self.distill_epochs is None else self.distill_epochs

    @property
    def distill_lr_value(self) -> float:
        """The distilled models' peak learning rate: ``distill_lr``, or ``stage1_lr`` when None."""
        return self.stage1_lr if self.distill_lr is None else self.distill_lr

    @property
    def extra_stages(self) -> tuple[str, ...]:
        """The optional folded stages that are on, in plan order: the students, the distilled
        model's in-fold copies (``EXTRA_STAGES``)."""
        on = {"students": self.students_enabled, "distill": self.distill_enabled}
        return tuple(s for s in EXTRA_STAGES if on[s])

    @property
    def folded_stages(self) -> tuple[str, ...]:
        """Every stage trained fold by fold in this run: stages 1 and 2, then ``extra_stages``."""
        return (*MAIN_STAGES, *self.extra_stages)

    def members(self) -> list[Settings]:
        """The other runs of a seed ensemble: these settings at each of ``blend_seeds``."""
        return [
            dataclasses.replace(self, train_seed=s, blend_seeds=[], blend_runs=[])
            for s in self.blend_seeds
        ]

    def stage(self, section: str) -> dict:
        """``{"lr": ..., ...}``: the settings of one section, unprefixed (a stage's params.json)."""
        prefix = "" if section == "data" else f"{section}_"
        return {
            f.name[len(prefix) :]: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata["section"] == section
        }

    def values(self) -> dict:
        """Every setting, paths shown relative to the repository where they lie inside it."""
        return {
            f.name: show(v) if isinstance(v, Path) else v
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }

    def changed(self) -> dict:
        """The settings that differ from the defaults (what a run's parameters file must say)."""
        base = Settings().values()
        return {k: v for k, v in self.values().items() if v != base[k]}

    def check_fold(self, fold: int, example: str = "-p fold 0") -> int:
        """Return ``fold`` if it is one of the folds, else a ConfigError naming the valid ones;
        ``example`` passes a fold as the caller's user does (a notebook's ``-p fold 0``, the main
        job's ``--folds 0,1``)."""
        if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < self.n_folds:
            raise ConfigError(
                f"parameter fold={fold!r}: expected an integer in 0..{self.n_folds - 1} "
                f"(n_folds={self.n_folds}); pass e.g. {example}"
            )
        return fold

    def run_path(self, run_dir: str | Path, name: str = "parameter run_dir") -> Path:
        """Resolve a folder to write; it must lie inside ``output_dir`` (runs write nowhere
        else). ``core.runs.folder.run_folder`` also gives the default run folder of these
        settings."""
        path = resolve(run_dir)
        if path == self.output_dir or not path.is_relative_to(self.output_dir):
            raise ConfigError(
                f"{name}={str(run_dir)!r}: expected a path inside the output folder "
                f"{self.output_dir} (e.g. outputs/runs/my-run)"
            )
        return path


def default(name: str):
    """The default of one setting (for functions that take a setting as a keyword)."""
    return getattr(DEFAULTS, name)


def _checked(f: dataclasses.Field, value):
    """``value`` as the setting ``f`` holds it, or a ConfigError naming the setting."""
    kind, *args = f.metadata["check"]
    if kind == "maybe":  # None, or a value the wrapped check accepts
        if value is None or value == "None":
            return None
        kind, *args = args
        expected = " or None"
    else:
        expected = ""
    if isinstance(value, str) and kind in ("int", "number", "seed"):
        value = _number(value)  # a YAML file or a raw -r parameter may give numbers as text
    bad = None
    if kind == "path":
        return resolve(value, f"setting {f.name}")
    if kind in LIST_ITEMS:
        return _list(f, value, kind)
    if kind in ("int", "seed"):
        if kind == "seed" and value is None:
            return None
        ok = isinstance(value, int) and not isinstance(value, bool)
        minimum = 0 if kind == "seed" else args[0]
        if not ok or value < minimum:
            bad = f"an integer >= {minimum}" + (" or None" if kind == "seed" else "")
    elif kind == "number":
        low, high, ends = (*args, "()")[:3]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        inside = ok and math.isfinite(value) and (value > low if ends[0] == "(" else value >= low)
        inside = inside and (value < high if ends[1] == ")" else value <= high)
        if not inside:
            bad = f"a number in {ends[0]}{low}, {high}{ends[1]}"
        else:
            value = float(value)
    elif kind == "choice":
        if value not in args[0]:
            bad = f"one of {', '.join(args[0])}"
    elif kind == "bool" and not isinstance(value, bool):
        bad = "True or False"
    if bad:
        raise ConfigError(
            f"setting {f.name}={value!r}: expected {bad}{expected} ({f.metadata['help']})"
        )
    return value


def _is_seed(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_name(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


# A list setting's items: their check, and what a message says is expected.
LIST_ITEMS = {
    "seeds": (_is_seed, "a list of distinct integers >= 0, e.g. [1, 2]"),
    "names": (_is_name, "a list of distinct run folders, e.g. [outputs/runs/run-0123456789]"),
}


def _list(f: dataclasses.Field, value, kind: str) -> list:
    """A list of distinct items; papermill's ``-p`` gives it as text (``"[1, 2]"``)."""
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    item_ok, expected = LIST_ITEMS[kind]
    ok = isinstance(value, (list, tuple)) and all(item_ok(v) for v in value)
    if not ok or len(set(value)) != len(value):
        raise ConfigError(f"setting {f.name}={value!r}: expected {expected} ({f.metadata['help']})")
    return list(value)


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text  # left for the check to refuse, named


def resolve(path: str | Path, name: str = "path") -> Path:
    """Resolve ``path`` against the repository root, refusing empty strings and NUL bytes."""
    if not isinstance(path, (str, Path)):
        raise ConfigError(f"{name}={path!r}: expected a file or folder path")
    text = str(path)
    if not text.strip() or "\x00" in text:
        raise ConfigError(f"{name}={text!r}: expected a non-empty file or folder path")
    p = Path(text).expanduser()
    return (p if p.is_absolute() else ROOT / p).resolve()


def show(path: str | Path) -> str:
    """``path`` relative to the repository when inside it (shorter messages and commands)."""
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else str(p)


DEFAULTS = Settings()
FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def from_values(values: dict, source: str) -> Settings:
    """Settings from flat ``{name: value}`` (a config file, papermill parameters, --set), with
    ``stage1.lr`` accepted for ``stage1_lr``; unknown names are refused, naming ``source``."""
    clean = {}
    for key, value in values.items():
        name = str(key).replace(".", "_")
        if name not in FIELDS:
            raise ConfigError(
                f"{source}: unknown setting {key!r}{closest(name, FIELDS)}; expected one of "
                f"{', '.join(FIELDS)}"
            )
        clean[name] = value
    return Settings(**clean)


def closest(name: str, known) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``name``, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_config(path: str | Path) -> dict:
    """A configuration file's ``{name: value}`` (flat YAML, as papermill's ``-f`` reads it)."""
    import yaml

    file = resolve(path, "--config")
    if not file.is_file():
        raise ConfigError(
            f"--config {path}: not found; expected a YAML file such as configs/reference.yaml"
        )
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.MarkedYAMLError as e:  # yaml's own text names "<unicode string>" and spans lines
        raise ConfigError(_yaml_problem(file, e)) from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{show(file)}: expected flat YAML 'name: value' lines ({e})") from None
    if not isinstance(values, dict):
        found = type(values).__name__
        raise ConfigError(f"{show(file)}: expected 'name: value' lines, found a {found}")
    from_values(values, show(file))  # names and values checked here, before anything runs
    return values


def _yaml_problem(file: Path, error) -> str:
    """A YAML syntax error in ``file`` in one line: where, and what yaml found there."""
    mark, context = error.problem_mark, ""
    where = (
        show(file)
        if mark is None
        else f"{show(file)}, line {mark.line + 1}, column {mark.column + 1}"
    )
    if error.context and error.context_mark:
        at = error.context_mark
        context = f" ({error.context} from line {at.line + 1}, column {at.column + 1})"
    return (
        f"{where}: expected flat YAML 'name: value' lines, found a syntax error: "
        f"{error.problem}{context} — fix that line"
    )


def config_text(settings: Settings, header: str = "") -> str:
    """``settings.changed()`` as a papermill parameters file (``-f``), one line per setting."""
    import yaml

    body = yaml.safe_dump(settings.changed(), sort_keys=False, allow_unicode=True)
    return header + ("" if body.strip() == "{}" else body)
