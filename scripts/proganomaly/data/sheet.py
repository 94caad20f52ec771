"""The slide sheet: read, validate and check before any job runs (including every annotation GeoJSON it names)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from proganomaly.data.geojson import GeoJSONError, read_polygons

SPLITS = ("train", "calibrate", "threshold", "validation", "test")
# Annotation masks are images, read by the evaluation; everything else in the column is parsed as GeoJSON.
_MASK_SUFFIXES = (".png", ".tif", ".tiff")
# The slides schema's slide_id pattern (workflow/schemas/slides.schema.yaml), checked here with a friendlier message;
# also the workflow's {slide} wildcard constraint (common.smk).
SLIDE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_SLIDE_ID = re.compile(SLIDE_ID_PATTERN)


class SheetError(ValueError):
    """The slide sheet is malformed; the message names the sheet, the slide and the fix."""


def read_slide_sheet(path: str | Path, produced_prefix: str = "results/") -> pd.DataFrame:
    """Read and check the slide sheet.

    Paths under ``produced_prefix`` are made by the workflow itself (the demo cohort) and count as present.
    Returns a frame indexed by slide_id with columns path, mpp (float or NaN), split, annotations (str or None).
    """
    path = Path(path)
    if not path.is_file():
        raise SheetError(f"slide sheet {path} does not exist; set 'slides:' in the config to your TSV")
    sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    sheet.columns = [c.strip() for c in sheet.columns]
    for col in ("slide_id", "path", "split"):
        if col not in sheet.columns:
            raise SheetError(f"slide sheet {path}: required column '{col}' is missing (columns: {list(sheet.columns)})")
    for col in ("mpp", "annotations"):
        if col not in sheet.columns:
            sheet[col] = ""
    sheet = sheet.apply(lambda s: s.str.strip())
    problems = []
    dup = sheet["slide_id"][sheet["slide_id"].duplicated()].unique()
    if len(dup):
        problems.append(f"duplicate slide_id(s) {sorted(dup)}: every slide needs its own id")
    parsed: dict[str, str | None] = {}
    for row in sheet.itertuples(index=False):
        sid = row.slide_id
        if not sid or any(c in sid for c in "/\\") or sid.startswith("."):
            problems.append(f"slide '{sid}': slide_id must not be empty, start with '.' or contain '/' or '\\'")
        elif not _SLIDE_ID.fullmatch(sid):
            problems.append(
                f"slide '{sid}': slide_id may only hold letters, digits, '.', '_' and '-' (ASCII), and must start with"
                " a letter or digit"
            )
        if row.split not in SPLITS:
            problems.append(f"slide '{sid}': unknown split '{row.split}' (use one of {', '.join(SPLITS)})")
        if row.mpp:
            try:
                mpp = float(row.mpp)
            except ValueError:
                mpp = float("nan")
            if not mpp > 0:
                problems.append(f"slide '{sid}': mpp '{row.mpp}' is not a positive number (µm per level-0 pixel)")
        for col, value in (("path", row.path), ("annotations", row.annotations)):
            if value and not value.startswith(produced_prefix) and not Path(value).exists():
                problems.append(f"slide '{sid}': {col} file {value} does not exist")
            elif col == "annotations" and value and Path(value).is_file():
                if value not in parsed:  # each file parsed once, however many slides name it
                    parsed[value] = _annotation_error(value)
                if parsed[value]:
                    problems.append(f"slide '{sid}': annotations {parsed[value]}")
        if not row.path:
            problems.append(f"slide '{sid}': path is empty")
    if problems:
        raise SheetError(f"slide sheet {path}:\n  - " + "\n  - ".join(problems))
    sheet["mpp"] = pd.to_numeric(sheet["mpp"].replace("", None), errors="coerce").astype(float)
    # object dtype: pandas' string dtype would turn None into NaN, which is truthy.
    sheet["annotations"] = pd.Series([v or None for v in sheet["annotations"]], index=sheet.index, dtype=object)
    return sheet.set_index("slide_id", drop=False)


def _annotation_error(path: str) -> str | None:
    """Parse an annotation GeoJSON now, so a malformed one fails before any job runs (not after inference)."""
    if Path(path).suffix.lower() in _MASK_SUFFIXES:
        return None
    try:
        read_polygons(path)
    except GeoJSONError as err:  # names the file and the feature
        fix = "" if "QuPath" in str(err) else "; fix it, or export it again from QuPath as GeoJSON"
        return f"{err}{fix}"
    return None


def records_for_validation(sheet: pd.DataFrame) -> list[dict]:
    """Rows as dicts in the form the slides schema validates (None for empty optionals)."""
    rows = []
    for rec in sheet.to_dict("records"):
        rows.append({k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()})
    return rows


def validate_rows(sheet: pd.DataFrame, schema_path: str | Path, source: str | Path) -> None:
    """Check every row against the slides schema (workflow/schemas/slides.schema.yaml) with one compiled validator.

    Raises SheetError listing each failing row as "slide 'ID': COLUMN: what is wrong". One validator for the whole
    sheet: `snakemake.utils.validate` per row re-reads and re-compiles the schema for every row, ~9 s of a
    1000-slide dry run.
    """
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for row in records_for_validation(sheet):
        for err in sorted(validator.iter_errors(row), key=lambda e: list(e.absolute_path)):
            where = ".".join(map(str, err.absolute_path)) or "row"
            problems.append(f"slide '{row.get('slide_id')}': {where}: {err.message} ({schema_path})")
    if problems:
        raise SheetError(f"slide sheet {source}:\n  - " + "\n  - ".join(problems))
