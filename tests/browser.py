"""Open pages in headless Chromium and check what a reader would see (not a conftest: import it).

``broken_refs(page)`` lists every ``<a href>`` and ``<img src>`` that does not resolve (a local
file that is missing, a data URI that does not decode, an anchor with no element of that id);
``screenshot``, ``dump_dom`` and ``pdf_fonts`` drive Chromium; ``cjk_font_names`` are the
installed fonts that cover Chinese. Run as a script to refresh the docs' screenshots:

    .venv/bin/python tests/browser.py outputs/runs/<run>    # docs/report.png, docs/errors.png
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--no-pdf-header-footer",
]


def have_chromium() -> bool:
    return Path(CHROMIUM).is_file()


def chromium(page: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page`` with a throw-away profile; raise if it fails."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, Path(page).resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed on {page} ({done.returncode}): {done.stderr[-2000:]}")
    return done


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 2000) -> Path:
    chromium(page, f"--window-size={width},{height}", f"--screenshot={out}")
    return out


def dump_dom(page: Path) -> str:
    """The page's DOM after loading, as Chromium serialises it."""
    return chromium(page, "--dump-dom").stdout


def pdf_fonts(page: Path, out: Path) -> set[str]:
    """Print ``page`` to PDF and return the fonts the PDF embeds (those text was drawn with),
    without the subset prefix: e.g. ``{"DejaVuSans", "WenQuanYiMicroHei"}``."""
    chromium(page, f"--print-to-pdf={out}")
    names = re.findall(rb"/BaseFont\s*/([^\s/<>\[\]()]+)", Path(out).read_bytes())
    return {name.decode().split("+", 1)[-1] for name in names}


def cjk_font_names() -> set[str]:
    """Installed fonts that cover Chinese, by PostScript name (as PDFs name them) and by family
    with spaces removed."""
    try:
        listed = subprocess.run(
            ["fc-list", "-f", "%{family},%{postscriptname}\\n", ":lang=zh"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except OSError:
        return set()
    return {f.replace(" ", "") for line in listed.splitlines() for f in line.split(",") if f}


def broken_refs(page: Path, html: str | None = None) -> list[str]:
    """Every ``<a href>`` and ``<img src>`` of ``page`` (or of its DOM ``html``) that does not
    resolve; remote (http, https) links are not followed and count as resolved."""
    page = Path(page)
    html = page.read_text(encoding="utf-8") if html is None else html
    refs = _Refs()
    refs.feed(html)
    broken = []
    for tag, ref in refs.refs:
        parts = urlsplit(ref)
        if parts.scheme == "data":
            if not _data_uri_ok(ref):
                broken.append(f"<{tag}> data URI that does not decode: {ref[:60]}…")
        elif parts.scheme in ("http", "https", "mailto"):
            continue
        elif parts.scheme in ("", "file"):
            target = page.parent / unquote(parts.path) if parts.path else page
            if not target.is_file():
                broken.append(f"<{tag}> {ref}: no file {target}")
            elif (
                parts.fragment
                and target == page
                and not (
                    {parts.fragment, unquote(parts.fragment)} & refs.ids  # as browsers look it up
                )
            ):
                broken.append(f"<{tag}> {ref}: no element with that id")
        else:
            broken.append(f"<{tag}> {ref}: unexpected scheme")
    return broken


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.refs.append((tag, attrs["href"]))
        if tag == "img":
            self.refs.append((tag, attrs.get("src") or ""))


def _data_uri_ok(uri: str) -> bool:
    header, sep, payload = uri.partition(",")
    if not sep:
        return False
    if header.endswith(";base64"):
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return False
        return not header.startswith("data:image/png") or data.startswith(b"\x89PNG\r\n\x1a\n")
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.rsplit("\n\n", 1)[-1], file=sys.stderr)
        return 2
    run = Path(argv[0])
    docs = Path(__file__).resolve().parents[1] / "docs"
    print(screenshot(run / "index.html", docs / "report.png", height=2200))
    # The error notebook from its first coloured character (section 4) on.
    shot = screenshot(
        run / "notebooks" / "05_errors-errors.html", docs / "errors.png", height=12000
    )
    print(crop_from_colour(shot, (0, 160, 60), above=420, height=1500))
    return 0


def crop_from_colour(png: Path, rgb: tuple[int, int, int], above: int, height: int) -> Path:
    """Crop ``png`` in place to ``height`` rows starting ``above`` rows over the first row with
    a solid patch (10+ pixels) of ``rgb``, or of a strong tint of it on white."""
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    white = 255 - image
    target = 255 - np.asarray(rgb)
    # A tint of rgb on white is white - s * (white - rgb): proportional to (white - rgb).
    scale = (white @ target) / (target @ target)
    hit = (scale > 0.8) & (np.abs(white - scale[..., None] * target).max(-1) < 12)
    rows = np.flatnonzero(hit.sum(1) >= 10)
    top = max(0, int(rows[0]) - above) if rows.size else 0
    Image.fromarray(image[top : top + height].astype(np.uint8)).save(png)
    return png


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
