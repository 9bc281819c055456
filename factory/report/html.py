"""``report.html``: report.md rendered by markdown-it-py (CommonMark with tables, raw HTML off), the plots
embedded, so the page is one self-contained file."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from markdown_it import MarkdownIt

from factory.report.markdown import render_markdown
from factory.report.schema import Report

CHANGES_NO_RESULT = True

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
         "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
         "code{background:#f3f3f3;padding:0 2px}")


def _embed_images_from(folder: Path):
    """A markdown-it image rule that inlines a PNG found in ``folder`` as a data URI (others stay links)."""
    def image(renderer, tokens, idx, options, env) -> str:
        token = tokens[idx]
        file = folder / str(token.attrGet("src"))
        if file.is_file():
            token.attrSet("src", "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode())
        return renderer.image(tokens, idx, options, env)

    return image


def render_html(report: Report, folder: Path) -> str:
    """A self-contained HTML page of the report; the plots are read from ``folder``."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("image", _embed_images_from(Path(folder)))
    body = md.render(render_markdown(report))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.name)} report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n")
