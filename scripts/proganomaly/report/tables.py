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
tr.strong td { font-weight: bold; }
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


def table_html(df: pd.DataFrame, float_format: str = ".4g", bold=None) -> str:
    """One <table> of a DataFrame (columns as headers, index dropped); rows where `bold` (a boolean per row) is true
    are set in bold (class "strong")."""
    if bold is not None and len(bold) != len(df):
        raise ValueError(f"{len(bold)} bold flags for a table of {len(df)} rows")
    head = "".join(f'<th class="text">{html.escape(str(c))}</th>' for c in df.columns)
    rows = []
    for i, record in enumerate(df.itertuples(index=False)):
        cells = []
        for value in record:
            text, is_text = _cell(value.item() if hasattr(value, "item") else value, float_format)
            cells.append(f'<td class="text">{text}</td>' if is_text else f"<td>{text}</td>")
        strong = bold is not None and bool(bold[i])
        rows.append(('<tr class="strong">' if strong else "<tr>") + "".join(cells) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def page(title: str, sections: list[tuple], note: str = "", float_format: str = ".4g") -> str:
    """A whole HTML page: title, an optional note, then one headed table per (heading, DataFrame) or (heading,
    DataFrame, bold flags per row)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        body.append(f'<p class="note">{html.escape(note)}</p>')
    for heading, df, *bold in sections:
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(table_html(df, float_format, bold[0] if bold else None))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# The columns a pathologist reads, in order (label: where it comes from). Everything else goes to the CSV.
READING_COLUMNS = (
    "slide",
    "split",
    "F1",
    "precision",
    "recall",
    "specificity",
    "normal tissue inside polygons",
    "normal tissue inside polygons, normal-only slides",
    "lesion sensitivity",
    "pixel AUROC, d²",
    "pixel AUROC, KDE",
    "F1 flagging everything",
    "warning",
)


def _get(mapping, *keys):
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def reading_row(name: str, m: dict, split: str) -> dict:
    """One row of the readable table from a slide's or pooled split's metrics (plot_eval_summary's merged dict:
    metrics.json with at_operating_point.all and the "specificity" object of evaluation.specificity)."""
    at = _get(m, "at_operating_point", "all") or {}
    spec = m.get("specificity") or {}
    pooled = "normal_only_slides" in spec
    if pooled:
        inside, normal_only = spec.get("normal_tissue_in_polygons_all"), spec.get("normal_tissue_in_polygons")
        warning = "; ".join(spec.get("warnings") or []) or None
    else:
        inside = spec.get("normal_tissue_in_polygons")
        normal_only = inside if spec.get("normal_only", m.get("normal_only")) else None
        warning = spec.get("warning")
    values = {
        "slide": name,
        "split": split,
        "F1": at.get("f1"),
        "precision": at.get("precision"),
        "recall": at.get("recall"),
        "specificity": at.get("specificity"),
        "normal tissue inside polygons": inside,
        "normal tissue inside polygons, normal-only slides": normal_only,
        "lesion sensitivity": spec.get("lesion_sensitivity"),
        "pixel AUROC, d²": _get(m, "pixel", "mahalanobis_d2", "auroc"),
        "pixel AUROC, KDE": _get(m, "pixel", "kde", "auroc"),
        "F1 flagging everything": spec.get("f1_flag_everything", at.get("f1_flag_everything")),
        "warning": warning,
    }
    return {k: (round(float(v), 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
            for k, v in values.items()}  # fmt: skip


def reading_table(metrics: dict[str, dict], split_of: dict[str, str]) -> pd.DataFrame:
    """The readable metrics table: a row per slide, then per pooled split ("pooled/<split>"), READING_COLUMNS at the
    operating point (three decimals; undefined numbers empty)."""
    rows = []
    for name, m in metrics.items():
        split = name.split("/", 1)[1] + " (pooled)" if name.startswith("pooled/") else split_of.get(name, "")
        rows.append(reading_row(name, m, split))
    return pd.DataFrame(rows, columns=list(READING_COLUMNS))
