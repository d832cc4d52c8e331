"""The competition's submission checks, and a writer that never leaves a failing file behind.

A submission is a CSV with header exactly ``ID,Prediction``, every test ID exactly once, and a
finite float in [0, 1] per row.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd

from core.io import atomic_path, write_csv
from core.io import examples as _examples

HEADER = ["ID", "Prediction"]


class SubmissionError(ValueError):
    """A submission failed the competition's checks; ``problems`` lists ``(check, message)``."""

    def __init__(self, message: str, problems: list[tuple[str, str]]):
        super().__init__(message)
        self.problems = problems


def _id_key(value) -> str:
    """IDs compare as text, with integers in plain decimal: the form they take in the CSV.

    Floats keep their ``.0`` on purpose, so an ID column turned float (``3.0``) is reported
    rather than silently matched to ``3``.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return str(value)


def _parse_prediction(value) -> float | None:
    """The value as a float, ``nan`` for an empty cell, ``None`` when it is not a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _read(path: Path) -> tuple[list[str], pd.DataFrame, list[str]]:
    """Header, rows as text, and row-shape problems of a CSV file (read as text, so values are
    checked as the competition will see them)."""
    with open(path, encoding="utf-8", newline="") as f:
        records = [r for r in csv.reader(f) if r]  # blank lines carry no rows
    if not records:
        return [], pd.DataFrame(columns=HEADER), []
    header, body = records[0], records[1:]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    shape = []
    if bad:
        shape.append(f"{len(bad)} rows do not have {len(header)} fields (lines {_examples(bad)})")
        body = [r for r in body if len(r) == len(header)]
    return header, pd.DataFrame(body, columns=header, dtype=object), shape


def check_submission(frame_or_path, test_ids) -> pd.DataFrame:
    """Run the competition's checks; return the frame with ``Prediction`` as float64.

    Raises ``SubmissionError`` listing every failed check with counts and examples.
    """
    if isinstance(frame_or_path, (str, Path)):
        source = str(frame_or_path)
        header, frame, problems = _read(Path(frame_or_path))
        problems = [("rows", p) for p in problems]
    else:
        source = "submission frame"
        frame = frame_or_path.reset_index(drop=True)
        header, problems = [str(c) for c in frame.columns], []

    if header != HEADER:
        found = ",".join(map(repr, header)) or "an empty file"
        problems.insert(0, ("header", f"expected header exactly {','.join(HEADER)}, found {found}"))
        raise _error(source, problems)

    def fail(check: str, count: int, what: str, examples: list, expected: str) -> None:
        problems.append((check, f"{count} {what} ({_examples(examples)}); expected {expected}"))

    keys = [_id_key(v) for v in frame["ID"]]
    wanted = [_id_key(v) for v in test_ids]
    if len(set(wanted)) != len(wanted):
        raise ValueError("test_ids has duplicates; pass the test file's IDs, each once")
    counts = pd.Series(keys, dtype=object).value_counts(sort=False)
    wanted_set = set(wanted)
    missing = [k for k in wanted if k not in counts.index]
    unexpected = [k for k in counts.index if k not in wanted_set]
    doubled = [f"{k} ×{n}" for k, n in counts[counts > 1].items()]
    once = f"each of the {len(wanted)} test IDs exactly once"
    if missing:
        fail("ID", len(missing), "test IDs are missing", missing, once)
    if unexpected:
        fail("ID", len(unexpected), "IDs are not test IDs", unexpected, once)
    if doubled:
        fail("ID", len(doubled), "IDs appear more than once", doubled, once)

    values = frame["Prediction"].tolist()
    parsed = [_parse_prediction(v) for v in values]
    preds = np.array([math.nan if p is None else p for p in parsed], dtype=float)
    shown = [f"ID {k}: {v!r}" for k, v in zip(keys, values, strict=True)]
    not_float = [shown[i] for i, p in enumerate(parsed) if p is None]
    nonfinite = [shown[i] for i, p in enumerate(parsed) if p is not None and not np.isfinite(p)]
    finite = np.isfinite(preds)  # NaN/inf are reported above, not again here
    outside = [shown[i] for i in np.flatnonzero(finite & ((preds < 0) | (preds > 1)))]
    unit = "finite floats in [0, 1]"
    if not_float:
        fail("Prediction", len(not_float), "predictions are not floats", not_float, unit)
    if nonfinite:
        fail(
            "Prediction", len(nonfinite), "predictions are NaN, empty or infinite", nonfinite, unit
        )
    if outside:
        fail("Prediction", len(outside), "predictions are outside [0, 1]", outside, unit)
    if problems:
        raise _error(source, problems)

    original = {_id_key(v): v for v in test_ids}  # every key is a test ID now
    return pd.DataFrame({"ID": [original[k] for k in keys], "Prediction": preds})


def _error(source: str, problems: list[tuple[str, str]], note: str = "") -> SubmissionError:
    lines = [f"  - {check} check: {message}" for check, message in problems]
    head = f"{source} failed {len(problems)} submission check(s):"
    return SubmissionError("\n".join([head, *lines]) + (f"\n{note}" if note else ""), problems)


def write_submission(path, ids, predictions, test_ids) -> Path:
    """Check ``ID,Prediction`` rows, write them atomically, re-read and re-check the file.

    Nothing reaches ``path`` unless both checks pass: the re-check runs on the temporary file
    before it is renamed into place, so a previous good file at ``path`` stays as it was.
    """
    path = Path(path)
    ids, predictions = list(ids), list(np.asarray(predictions, dtype=object).ravel())
    state = f"{path} was left unchanged" if path.exists() else f"{path} was not created"
    note = f"nothing was written: {state}"
    if len(ids) != len(predictions):
        problem = ("rows", f"{len(ids)} IDs but {len(predictions)} predictions")
        raise _error("submission", [problem], note)
    frame = pd.DataFrame({"ID": ids, "Prediction": predictions})
    try:
        check_submission(frame, test_ids)
        with atomic_path(path) as tmp:
            write_csv(tmp, frame)
            check_submission(tmp, test_ids)  # what the competition will read
    except SubmissionError as e:
        raise _error(f"submission for {path}", e.problems, note) from None
    return path
