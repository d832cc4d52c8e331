"""Reading and validating the review files: the competition text format and the reference's CSV.

The competition format is one row per line followed by a blank line (``label<TAB>text`` for train,
``text`` for test, where the test row's index from 0 is its ID). Parsing is strict on purpose: a
missing or doubled line would otherwise silently shift every later test ID.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import hashing
from core.config import ROOT

BOM = b"\xef\xbb\xbf"
LABELS = {"0": 0, "1": 1}
ID_COLUMNS = ("id", "ID", "Id")  # a CSV's optional id column
# Control characters (Unicode category Cc: C0, DEL, C1) but tab and LF, which the formats use.
# The vocabulary has none of them: each would become [UNK], and core.serving.predict would echo it into a
# CSV. CR never reaches the check (CRLF is converted, a lone CR refused first).
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Within one text (a row, a command-line sentence) a line break is one of them too: a text is one
# line, and a sentence holding LF would be scored as one but read back from a file as two.
TEXT_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


class DataError(ValueError):
    """A data file is missing or malformed; the message says where, what was expected, the fix."""

    def __init__(self, message: str, path: Path | None = None, line: int | None = None):
        super().__init__(message)
        self.path = path
        self.line = line


@dataclass
class Dataset:
    texts: list[str]
    labels: np.ndarray | None  # int8 0/1, None for unlabelled files
    ids: np.ndarray  # int64
    path: Path
    line_numbers: list[int]  # 1-based line of each row, for messages

    def __len__(self) -> int:
        return len(self.texts)


def read_labelled(path: str | Path) -> Dataset:
    """Read a train file: ``.csv`` → seed CSV (``content,label``), else ``label<TAB>text``."""
    path = Path(path)
    text = _read_text(path)
    return _read_csv(path, text, True) if _is_csv(path) else _read_rows(path, text, True)


def read_unlabelled(path: str | Path, labelled_hint: str = "pass it as train") -> Dataset:
    """Read a test file: ``.csv`` → seed CSV (``content``), else one ``text`` per line pair.

    A labelled file is refused; ``labelled_hint`` says what to do instead (callers that take no
    train file, e.g. core.serving.predict, say their own).
    """
    path = Path(path)
    text = _read_text(path)
    if _is_csv(path):
        return _read_csv(path, text, False, labelled_hint)
    return _read_rows(path, text, False, labelled_hint)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a data file; a missing one is a DataError saying where it belongs."""
    path = Path(path)
    _check_exists(path)
    return hashing.file_sha256(path)


# -- helpers ---------------------------------------------------------------------------------------


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def show_path(path: Path) -> str:
    """The path as a user would type it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _snip(s: str, limit: int = 40) -> str:
    return repr(s if len(s) <= limit else s[:limit] + "…")


def _fail(path: Path, line: int | None, message: str) -> DataError:
    where = show_path(path) if line is None else f"{show_path(path)}, line {line}"
    return DataError(f"{where}: {message}", path=path, line=line)


def _check_exists(path: Path) -> None:
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise _fail(
            path,
            None,
            f"{what}; expected the data file at {path} — put the file there "
            "(./suite.sh setup copies the competition files from ../shared/data when present) "
            "or pass the path where it is",
        )


def _read_text(path: Path) -> str:
    """Decode the file as UTF-8 (BOM and CRLF accepted) and return it with LF line ends."""
    _check_exists(path)
    raw = path.read_bytes()
    body = raw[len(BOM) :] if raw.startswith(BOM) else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[: e.start].count(b"\n") + 1
        bad = body[e.start : e.start + 4]
        raise _fail(
            path,
            line,
            f"expected UTF-8 text, found bytes {bad!r} that are not UTF-8 (GBK or another legacy "
            "encoding?) — re-save the file as UTF-8",
        ) from None
    if not text.strip():
        raise _fail(path, None, "expected rows, found an empty file — check the path or re-export")
    text = text.replace("\r\n", "\n")
    if "\r" in text:
        # A lone CR is an old-Mac line end; splitting on LF only would merge rows silently.
        line = text[: text.index("\r")].count("\n") + 1
        raise _fail(path, line, "expected LF or CRLF line ends, found a lone CR — convert to LF")
    if found := CONTROL.search(text):
        no = text.count("\n", 0, found.start()) + 1
        line = text.split("\n")[no - 1]
        raise _fail(path, no, f"{control_problem(line)} — remove it")
    return text


def control_problem(text: str) -> str | None:
    """What is wrong with ``text`` (one row or sentence) if it holds a control character
    (anything but tab, a line break included)."""
    found = TEXT_CONTROL.search(text)
    if found is None:
        return None
    name = " (a line break)" if found.group() in "\n\r" else ""
    return (
        f"expected text without control characters, found U+{ord(found.group()):04X}{name} in "
        f"{_snip(text)}"
    )


def _read_rows(path: Path, text: str, labelled: bool, labelled_hint: str = "") -> Dataset:
    """Parse the competition format: row, blank line, row, blank line, … (last blank optional)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    rows = lines[0::2]
    if labelled and not any("\t" in r for r in rows):
        raise _fail(
            path,
            1,
            f"expected 'label<TAB>text' rows, found no tab in any row (first row {_snip(rows[0])}) "
            "— this looks like an unlabelled test file; pass it as test, or add labels",
        )
    texts, labels, numbers = [], [], []
    for i, line in enumerate(lines):
        no = i + 1
        if i % 2 == 1:
            if line.strip():
                raise _fail(
                    path,
                    no,
                    f"expected an empty line after the row on line {no - 1}, found {_snip(line)} "
                    "— a blank separator line is missing; add it (or rejoin a row split in two)",
                )
            continue
        body = _parse_row(path, no, line, labelled, labels, labelled_hint)
        texts.append(body)
        numbers.append(no)
    return Dataset(
        texts=texts,
        labels=np.asarray(labels, dtype=np.int8) if labelled else None,
        ids=np.arange(len(texts), dtype=np.int64),
        path=path,
        line_numbers=numbers,
    )


def _parse_row(
    path: Path, no: int, line: str, labelled: bool, labels: list[int], labelled_hint: str = ""
) -> str:
    """Return the text of one row (appending its label to ``labels``), or raise a DataError."""
    shape = "'label<TAB>text' with label 0 or 1" if labelled else "a text row"
    if not line:
        raise _fail(
            path,
            no,
            f"expected {shape}, found an empty line — two blank lines in a row (or a trailing "
            "one); remove the extra blank line",
        )
    if not line.strip():  # spaces, a full-width space: not a blank separator line
        raise _fail(
            path,
            no,
            f"expected {shape}, found a whitespace-only row {_snip(line)} — fill it in or "
            "remove the row",
        )
    if not labelled:
        if line[:2] in ("0\t", "1\t"):
            raise _fail(
                path,
                no,
                f"expected a text row without a label, found {_snip(line)} — this looks like a "
                f"labelled train file; {labelled_hint}",
            )
        if "\t" in line:
            raise _fail(
                path, no, f"expected a text without tabs, found {_snip(line)} — remove the tab"
            )
        return line
    parts = line.split("\t")
    if len(parts) != 2:
        found = "no tab" if len(parts) == 1 else f"{len(parts) - 1} tabs"
        raise _fail(
            path,
            no,
            f"expected {shape} (exactly one tab), found {found} in {_snip(line)} — fix the row "
            "or remove it",
        )
    label, body = parts
    if label not in LABELS:
        raise _fail(
            path, no, f"expected {shape}, found {_snip(line)} — fix the label or remove the row"
        )
    if not body.strip():
        raise _fail(
            path,
            no,
            f"expected {shape} and a non-empty text, found {_snip(line)} — add the text or "
            "remove the row",
        )
    labels.append(LABELS[label])
    return body


def _read_csv(path: Path, text: str, labelled: bool, labelled_hint: str = "") -> Dataset:
    """Parse the reference's CSV: a ``content`` header (+ ``label``), optional ``id``/``ID``."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader)]
    need = ["content", "label"] if labelled else ["content"]
    expected = f"expected a header with columns {need}, found {header}"
    missing = [c for c in need if c not in header]
    others = [h for h in header if h not in ("content", *ID_COLUMNS)]
    if missing == ["label"] and others:  # e.g. "lable": a misspelt column, not a test file
        raise _fail(
            path,
            1,
            f"{expected} — no column is named 'label'; rename the label "
            f"column ({', '.join(map(repr, others))}?) to label",
        )
    if missing:
        hint = (
            " — this looks like an unlabelled test file; pass it as test"
            if missing == ["label"]
            else " — rename the columns or add them"
        )
        raise _fail(path, 1, f"{expected}{hint}")
    if not labelled and "label" in header:  # refused as the text format refuses labelled rows
        raise _fail(
            path,
            1,
            f"expected a header with 'content' and no 'label', found {header} "
            f"— this looks like a labelled train file; {labelled_hint}",
        )
    col = {name: header.index(name) for name in need}
    id_col = next((header.index(n) for n in ID_COLUMNS if n in header), None)
    texts, labels, ids, numbers, records = [], [], [], [], []
    prev = reader.line_num
    try:
        for record in reader:
            records.append((prev + 1, record))  # a quoted field may span lines; report the first
            prev = reader.line_num
    except csv.Error as e:
        raise _fail(path, prev + 1, f"expected valid CSV, found {e} — fix the quoting") from None
    while records and not records[-1][1]:
        records.pop()  # blank lines at the end carry no rows
    if not records:
        raise _fail(path, None, "expected rows after the header, found none — add the data rows")
    for no, record in records:
        if len(record) != len(header):
            raise _fail(
                path,
                no,
                f"expected {len(header)} fields like the header {header}, found {len(record)} in "
                f"{_snip(','.join(record))} — quote texts that contain commas, or remove the row",
            )
        body = record[col["content"]]
        if not body.strip():
            found = f"a whitespace-only one {_snip(body)}" if body else "an empty one"
            raise _fail(
                path,
                no,
                f"expected a non-empty 'content', found {found} — add the text or remove the row",
            )
        if problem := control_problem(body):  # a quoted field may hold a line break
            raise _fail(path, no, f"{problem} — remove it")
        if labelled:
            label = record[col["label"]].strip()
            if label not in LABELS:
                raise _fail(
                    path,
                    no,
                    f"expected label 0 or 1, found {_snip(label)} — fix the label or "
                    "remove the row",
                )
            labels.append(LABELS[label])
        if id_col is not None:
            try:
                ids.append(int(record[id_col]))
            except ValueError:
                raise _fail(
                    path, no, f"expected an integer id, found {_snip(record[id_col])} — fix the id"
                ) from None
        texts.append(body)
        numbers.append(no)
    id_arr = np.asarray(ids if id_col is not None else range(len(texts)), dtype=np.int64)
    if len(np.unique(id_arr)) != len(id_arr):
        values, counts = np.unique(id_arr, return_counts=True)
        dup = int(values[counts > 1][0])
        raise _fail(
            path,
            numbers[ids.index(dup)],
            f"expected unique ids, found id {dup} more than "
            "once — make the ids unique or drop the id column",
        )
    return Dataset(
        texts=texts,
        labels=np.asarray(labels, dtype=np.int8) if labelled else None,
        ids=id_arr,
        path=path,
        line_numbers=numbers,
    )
