"""Self-contained HTML tables for the report (inline CSS, no scripts), so they render inside its iframe."""

from __future__ import annotations

import html

import pandas as pd

_CSS = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; color: #222; }
h1 { font-size: 18px; } p.note { color: #555; max-width: 60em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
"""


def _cell(value, float_format: str) -> tuple[str, bool]:
    """(escaped text, is_text) of one cell."""
    if value is None or (isinstance(value, float) and value != value):
        return "–", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), True
    if isinstance(value, float):
        return format(value, float_format), False
    if isinstance(value, int):
        return f"{value:,}", False
    return html.escape(str(value)), True


def table_html(df: pd.DataFrame, float_format: str = ".4g") -> str:
    """One <table> of a DataFrame (columns as headers, index dropped)."""
    head = "".join(f'<th class="text">{html.escape(str(c))}</th>' for c in df.columns)
    rows = []
    for record in df.itertuples(index=False):
        cells = []
        for value in record:
            text, is_text = _cell(value.item() if hasattr(value, "item") else value, float_format)
            cells.append(f'<td class="text">{text}</td>' if is_text else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def page(title: str, sections: list[tuple[str, pd.DataFrame]], note: str = "", float_format: str = ".4g") -> str:
    """A whole HTML page: title, an optional note, then one headed table per (heading, DataFrame)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        body.append(f'<p class="note">{html.escape(note)}</p>')
    for heading, df in sections:
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(table_html(df, float_format))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
