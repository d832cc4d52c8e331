#!/usr/bin/env bash
# Set up on a fresh machine, then run the pipeline or the tests, or explore in JupyterLab.
#
#   ./suite.sh run [pipeline options]   # set-up, then the whole pipeline (python -m core.pipeline)
#   ./suite.sh test [pytest options]    # set-up, then ruff (lint, format) and the test suite
#   ./suite.sh lab [jupyter options]    # set-up, then JupyterLab on the repo (python -m core.lab):
#                                       # on 127.0.0.1 only; open the URL with the token it prints
#   ./suite.sh board [tensorboard opts] # set-up, then TensorBoard over every run (python -m
#                                       # core.training.board) on 127.0.0.1:6006
#   ./suite.sh setup                    # set-up only
#
# Set-up is idempotent and quick when nothing changed: a project-local .venv, the pinned packages
# (reinstalled only when pyproject.toml changes), a CJK font for plots, the competition data in
# $DATA_DIR (copied from ../shared/data when present), and pretrained/m3e-small converted once;
# `test` also installs headless Chromium (apt, as root) for the run report's browser test.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
DATA_DIR=${DATA_DIR:-data}
DATA_FILES=(train_shuffle.txt test_handout.txt)
VENV=.venv

say() { printf '[suite] %s\n' "$*" >&2; }

setup_venv() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    say "Python 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11"
    exit 1
  fi
  [ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    say "installing pinned packages into $VENV (first run: a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    # A kernelspec pointing at this venv's python, so papermill never picks another interpreter.
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
    rm -f "$VENV"/.installed-* && touch "$stamp"
  fi
}

setup_font() {
  # Plots label Chinese characters; without a CJK font they render as empty boxes.
  if command -v fc-list >/dev/null && fc-list :lang=zh | grep -q .; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing a CJK font (fonts-wqy-microhei)"
    { apt-get update -qq && apt-get install -y -qq fonts-wqy-microhei fontconfig; } >/dev/null 2>&1 \
      || say "could not install fonts-wqy-microhei: Chinese plot labels may show as boxes"
  else
    say "no CJK font found: install fonts-wqy-microhei (Debian/Ubuntu) so plots show Chinese text"
  fi
}

setup_browser() {
  # The tests open the run report in headless Chromium (that test is skipped without it).
  if command -v chromium >/dev/null; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing chromium (the browser test of the run report)"
    { apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null 2>&1 \
      || say "could not install chromium: the browser test will be skipped"
  else
    say "no chromium found: the browser test will be skipped (apt-get install chromium)"
  fi
}

setup_data() {
  mkdir -p "$DATA_DIR"
  for f in "${DATA_FILES[@]}"; do
    [ -s "$DATA_DIR/$f" ] && continue
    if [ -s "../shared/data/$f" ]; then
      say "copying ../shared/data/$f to $DATA_DIR/"
      cp "../shared/data/$f" "$DATA_DIR/$f.part" && mv "$DATA_DIR/$f.part" "$DATA_DIR/$f"
    else
      say "missing $DATA_DIR/$f: put the competition files ${DATA_FILES[*]} into $DATA_DIR/"
      say "(train: 'label<TAB>text' rows, test: one text per row, a blank line after every row)"
      exit 1
    fi
  done
}

setup() {
  setup_venv
  setup_font
  setup_data
  "$VENV/bin/python" -m core.weights
}

cmd=${1:-}
shift || true
case "$cmd" in
  setup) setup ;;
  run)
    setup
    # The settings' own defaults are data/<file>; name the files only for another DATA_DIR, so a
    # --config file's train_path (configs/dev-holdout.yaml) is not overridden.
    paths=()
    if [ "$DATA_DIR" != data ]; then
      paths=(--train-path "$DATA_DIR/${DATA_FILES[0]}" --test-path "$DATA_DIR/${DATA_FILES[1]}")
    fi
    exec "$VENV/bin/python" -m core.pipeline "${paths[@]}" "$@"
    ;;
  test)
    setup
    setup_browser
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  lab)
    setup
    exec "$VENV/bin/python" -m core.lab "$@"
    ;;
  board)
    setup
    exec "$VENV/bin/python" -m core.training.board "$@"
    ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
