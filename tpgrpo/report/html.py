"""A self-contained HTML page: inline CSS, images embedded as `data:` URIs, no script, no network."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1500px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 6px 0; }
pre { background: #f8f8f8; padding: 8px; font-size: 0.8em; overflow-x: auto; }
.note { color: #666; font-size: 0.85em; }
"""


def esc(value: Any) -> str:
    """HTML-escaped text of a value."""
    return html.escape(str(value))


def image(png: bytes | str | Path, alt: str) -> str:
    """An `<img>` with the PNG (bytes or a file) embedded as a data URI."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img src="{uri}" alt="{esc(alt)}">'


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """A table (no header row when `headers` is None); the first `left` columns are left-aligned
    (labels), the rest right-aligned (numbers)."""

    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{esc(v)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers)) if headers is not None else ""
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def section(title: str, *parts: str) -> str:
    """An `<h2>` section of already-rendered parts."""
    return f"<section><h2>{esc(title)}</h2>{''.join(parts)}</section>"


def paragraph(text: str, note: bool = False) -> str:
    return f"<p{' class=note' if note else ''}>{esc(text)}</p>"


def preformatted(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def page(title: str, sections: Sequence[str]) -> str:
    """The whole document."""
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{esc(title)}</h1>{''.join(sections)}</body></html>\n"
    )
