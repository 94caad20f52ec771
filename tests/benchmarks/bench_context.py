"""Context detector benchmark (issue 19): patch-level AUROC of neighbourhood scores on a finished benchmark run.

    .venv/bin/python tests/benchmarks/bench_context.py [--run /tmp/bench3/macenko/seed1]
        [--work /tmp/proganomaly-bench-context] [--settings quick|full] [--choose NAME] [--test]

Reads a run of the workflow (its results/ holds the demo slides and annotations, the tiling's patch tables and stain
estimates, and the patch detector's per-patch scores of the validation and test slides). For every slide with a patch
table it computes the 20 texture statistics of each stain-normalised patch (proganomaly.context.features; cached in
--work), then for each setting (radii, statistics, own features, k, standardisation):

- fits the reference (proganomaly.context.reference) on the train and calibrate slides' patches;
- scores the validation slides' patches, and the calibrate slide's against the other reference slides only;
- reports patch-level AUROC (a patch is positive when its centre lies inside an annotated region of the class or
  group; negatives are patches whose centre lies outside every annotation; other classes left out), pooled over
  the validation slides, for (a) the patch detector's own per-patch score (raw mean d², and the robust z of its
  slide that the workflow thresholds), (b) the context score, (c) their fusion (upper-tail probabilities of z and of
  the context score under the normal-only validation slide's patches, combined by Fisher and by min-p with
  proganomaly.maps.fusion);
- and the specificity check: the fraction of normal patches of the normal-only validation slide and of the unseen
  lab's validation slide above the 0.999 quantile of the calibrate slide's context scores.

Settings are compared on validation only. --test prints the test slides' numbers once, for the chosen setting
(--choose, default the one documented in the report), after everything else. --dense 3 (the default) scores the
tiling's patches shifted by thirds of the stride as well (9× the patch centres: a class region of the demo holds
only ~3 centres of the tiling's own 24 µm grid); the detector's score of such a patch is its stitched d² map's
mean over the patch interior. --settings full adds 44 settings (~5 min on 2 cores).

Result (seeds 1 and 2 of the Macenko benchmark, validation, dense 3): r256_mean+std_own_k3_robust lifts same-stain
tissue from 0.41 (detector z) to 0.68 (magnified 0.51 -> 0.86, cell islands 0.28 -> 0.45), 0.71 within slides;
its min-p fusion with the detector's z has a three-group mean of 0.83 (detector z alone 0.79); 1.0 % and 1.8 % of
the normal patches of the lab-C and normal-only validation slides exceed the calibrate slide's 0.999 quantile. On
the test slides (printed once) it does not hold: same-stain 0.37, and 20-27 % (labs A, B) and 100 % (lab D) of
normal test patches exceed that quantile.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from sklearn.metrics import roc_auc_score  # noqa: E402

from proganomaly.context import features as cfeatures  # noqa: E402
from proganomaly.context.neighbourhood import patch_centres  # noqa: E402
from proganomaly.context.reference import fit_reference, knn_score  # noqa: E402
from proganomaly.context.vectors import ContextSettings, context_vectors, vector_names  # noqa: E402
from proganomaly.maps import fusion  # noqa: E402

NORMAL_QUANTILE = 0.999
GROUPS = ("foreign stain", "same-stain tissue", "artefacts")
CHOSEN = "r256_mean+std_own_k3_robust"


def splits(run: Path) -> pd.DataFrame:
    """slide_id, split, path, annotations: the run's sheet when it names one, else the demo's naming."""
    override = run / "override.yaml"
    sheet = None
    if override.exists():
        sheet = (yaml.safe_load(override.read_text()) or {}).get("slides")
    if sheet and Path(sheet).exists():
        df = pd.read_csv(sheet, sep="\t", dtype=str).fillna("")
        return df[["slide_id", "split", "path", "annotations"]]
    rows = []
    for tif in sorted((run / "results/demo").glob("*.tif")):
        s = tif.stem
        split = ("train" if s.startswith("demo_train") else "calibrate" if s == "demo_calibrate"
                 else "validation" if s.startswith("demo_validation") else "test")  # fmt: skip
        ann = tif.with_suffix(".geojson")
        rows.append((s, split, f"results/demo/{tif.name}", f"results/demo/{ann.name}" if ann.exists() else ""))
    return pd.DataFrame(rows, columns=["slide_id", "split", "path", "annotations"])


def stain_method(run: Path) -> str:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text()) or {}
    method = (cfg.get("stain") or {}).get("normalisation", "none")
    over = run / "override.yaml"
    if over.exists():
        method = ((yaml.safe_load(over.read_text()) or {}).get("stain") or {}).get("normalisation", method)
    return method


def dense_table(run: Path, slide_id: str, dense: int) -> pd.DataFrame:
    """The tiling's patch table, or with dense > 1 its patches shifted by multiples of stride / dense in x and y (the
    same tissue on a finer grid: more patch centres inside each annotated region, for steadier AUROCs)."""
    table = pd.read_parquet(run / f"results/tiles/{slide_id}.patches.parquet")[["x", "y", "width", "height"]]
    if dense <= 1:
        return table.reset_index(drop=True)
    qc = pd.read_json(run / f"results/tiles/{slide_id}.qc.json", typ="series")
    stride = float(qc["patch"]["stride_level0_px"])
    width, height = int(qc["dimensions"]["width"]), int(qc["dimensions"]["height"])
    shifts = [round(stride * i / dense) for i in range(dense)]
    parts = []
    for dx, dy in itertools.product(shifts, shifts):
        t = table.copy()
        t["x"] += dx
        t["y"] += dy
        parts.append(t[(t.x + t.width <= width) & (t.y + t.height <= height)])
    return pd.concat(parts).drop_duplicates(["x", "y"]).sort_values(["y", "x"]).reset_index(drop=True)


def slide_features(run: Path, work: Path, slide_id: str, path: str, out_px: int, method: str, dense: int) -> tuple:
    """(patch table, (N, 20) features, mpp, seconds) of one slide, from the cache in `work` when there."""
    from proganomaly.data.slide import open_slide
    from proganomaly.data.stain import slide_normaliser

    table = dense_table(run, slide_id, dense)
    cache = work / f"{run.name}.{slide_id}.{method}.{out_px}.dense{dense}.npz"
    if cache.exists():
        z = np.load(cache)
        return table, z["features"], float(z["mpp"]), float(z["seconds"])
    t0 = time.perf_counter()
    normaliser = slide_normaliser(method, run / f"results/tiles/{slide_id}.stain.json")
    with open_slide(run / path) as slide:
        feats = cfeatures.slide_features(slide, table, out_px, normaliser=normaliser)
        mpp = float(slide.mpp)
    seconds = time.perf_counter() - t0
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, features=feats, mpp=mpp, seconds=seconds)
    return table, feats, mpp, seconds


def patch_parts(run: Path, table: pd.DataFrame, annotations: str) -> pd.DataFrame:
    """Per patch: 'normal' (centre outside every annotation) and one bool column per class and per group."""
    from proganomaly.evaluation.classes import class_regions

    centres = patch_centres(table)
    points = shapely.points(centres)
    out = pd.DataFrame(index=table.index)
    inside_any = np.zeros(len(table), bool)
    if annotations:
        regions, groups = class_regions(run / annotations)
        for cls, geom in regions.items():
            inside = shapely.contains_xy(geom, centres[:, 0], centres[:, 1])
            out[f"class:{cls}"] = inside
            grp = f"group:{groups[cls]}"
            out[grp] = (out[grp] if grp in out else False) | inside
            inside_any |= inside
    del points
    out["normal"] = ~inside_any
    return out


def detector_scores(run: Path, slide_id: str, table: pd.DataFrame, border_px: int) -> pd.DataFrame:
    """The patch detector's score of each patch and its robust z within the slide (median, 1.4826·MAD).

    The score is the mean of the slide's stitched d² map (maps/mahalanobis_d2.tif) over the patch's interior (the
    patch less `border_px` on each side), so that patches of a denser grid than the one inferred get the score the
    detector gives their place; on the inferred grid it is infer_slide's mean_d2 up to the overlap averaging.
    """
    import tifffile

    path = run / f"results/slides/{slide_id}/maps/mahalanobis_d2.tif"
    if not path.exists():
        return pd.DataFrame({"det_d2": np.nan, "det_z": np.nan}, index=table.index)
    with tifffile.TiffFile(path) as tif:
        d2map = tif.series[0].levels[0].asarray().astype(np.float64)
    grid = pd.read_json(run / f"results/slides/{slide_id}/inference.json", typ="series")["map_grid"]
    ds = int(grid["downsample"])
    d2 = np.full(len(table), np.nan)
    for i, (x, y, w, h) in enumerate(table[["x", "y", "width", "height"]].itertuples(index=False)):
        r0, r1 = (y + border_px) // ds, -(-(y + h - border_px) // ds)
        c0, c1 = (x + border_px) // ds, -(-(x + w - border_px) // ds)
        block = d2map[r0:r1, c0:c1]
        d2[i] = np.nanmean(block) if np.isfinite(block).any() else np.nan
    med = np.nanmedian(d2)
    scale = 1.4826 * np.nanmedian(np.abs(d2 - med))
    return pd.DataFrame({"det_d2": d2, "det_z": (d2 - med) / scale}, index=table.index)


def _name(radii, stats, own, k, st, kind) -> str:
    name = f"r{'-'.join(map(str, radii))}_{'+'.join(stats)}_{'own' if own else 'noown'}_k{k}_{st}"
    return name + ("" if kind == "disc" else "_ring")


def settings_grid(kind: str) -> dict[str, tuple[ContextSettings, int, str]]:
    """name -> (vector settings, k, standardisation). quick: radii × statistics × own at k 3, robust, discs; full
    adds smaller radii (the demo's anomalies are 30-80 µm across), k 1 and 10, plain standardisation and rings."""
    radii_sets = [(64, 128, 256), (128, 256), (64, 128)]
    combos = [(r, st, own, 3, "robust", "disc") for r in radii_sets for st in [("mean",), ("mean", "std")]
              for own in (True, False)]  # fmt: skip
    if kind == "full":
        combos += [(r, st, own, 3, "robust", "disc") for r in [(32,), (32, 64), (64,), (32, 64, 128), (256,)]
                   for st in [("mean",), ("mean", "std")] for own in (True, False)]  # fmt: skip
        for r, st in itertools.product([(64, 128, 256), (32, 64), (64, 128)], [("mean",), ("mean", "std")]):
            combos += [(r, st, True, k, "robust", "disc") for k in (1, 10)]
            combos += [(r, st, True, 3, "plain", "disc"), (r, st, True, 3, "robust", "ring")]
    return {_name(*c): (ContextSettings(c[0], c[1], c[5], c[2]), c[3], c[4]) for c in combos}


def tail_p(values: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Upper-tail probability of `values` under the `normal` sample (fusion.tail_probability on its exact histogram)."""
    normal = np.asarray(normal, np.float64)
    normal = normal[np.isfinite(normal)]
    edges = np.unique(normal)
    if edges.size < 2:
        edges = np.array([normal.min() - 1.0, normal.min()]) if normal.size else np.array([0.0, 1.0])
    idx = np.searchsorted(edges, normal, side="left")
    counts = np.bincount(idx, minlength=edges.size + 1).astype(np.float64)
    return fusion.tail_probability(values, counts, edges)


def aurocs(df: pd.DataFrame, score_cols: list[str]) -> dict[str, dict[str, float]]:
    """{part: {score: AUROC}} pooled over the rows of `df` (positives in the part, negatives normal)."""
    parts = [c for c in df.columns if c.startswith(("class:", "group:"))]
    out = {}
    for part in parts:
        pos = df[part].fillna(False).astype(bool).to_numpy()
        neg = df["normal"].to_numpy()
        sel = pos | neg
        if pos.sum() == 0 or neg.sum() == 0:
            continue
        out[part] = {"n_pos": int(pos.sum())}
        for col in score_cols:
            s = df[col].to_numpy(np.float64)[sel]
            y = pos[sel]
            ok = np.isfinite(s)
            out[part][col] = float(roc_auc_score(y[ok], s[ok])) if len(set(y[ok])) == 2 else float("nan")
    return out


def evaluate(data: dict, sheet: pd.DataFrame, settings: ContextSettings, k: int, standardise: str, split: str):
    """Rows of one split's patches with every score, and the specificity numbers, for every run in `data`."""
    frames, spec = [], {}
    for run, slides in data.items():
        df, sp, _ = evaluate_run(slides, sheet, settings, k, standardise, split)
        df["run"] = run
        frames.append(df)
        spec.update({f"{run}/{s}": v for s, v in sp.items()})
    df = pd.concat(frames, ignore_index=True)
    parts = [c for c in df.columns if c.startswith(("class:", "group:"))]
    df[parts] = df[parts].astype("boolean").fillna(False).astype(bool)
    return df, spec


def evaluate_run(data: dict, sheet: pd.DataFrame, settings: ContextSettings, k: int, standardise: str, split: str):
    """One run: rows of one split's patches with every score, the specificity numbers and the calibrate quantile."""
    ref_slides = sheet[sheet.split.isin(["train", "calibrate"])].slide_id.tolist()
    slides = sheet[sheet.split == split].slide_id.tolist()
    vecs = {}
    for s in ref_slides + slides:
        d = data[s]
        key = repr(settings)
        if key not in d.setdefault("vectors", {}):  # k and standardisation do not change the vectors
            d["vectors"][key] = context_vectors(d["table"], d["features"], d["mpp"], settings)[0]
        vecs[s] = d["vectors"][key]
    x = np.concatenate([vecs[s] for s in ref_slides])
    groups = np.concatenate([np.full(len(vecs[s]), i) for i, s in enumerate(ref_slides)])
    names = vector_names(cfeatures.feature_names(), settings)
    ref = fit_reference(x, names, k=k, standardise=standardise, groups=groups, group_names=ref_slides,
                        settings=settings.to_dict())  # fmt: skip
    calibrate = sheet[sheet.split == "calibrate"].slide_id.tolist()
    cal_scores = np.concatenate([knn_score(ref, vecs[s], exclude_group=s) for s in calibrate])
    q_cal = float(np.quantile(cal_scores, NORMAL_QUANTILE))
    frames = []
    for s in slides:
        d = data[s]
        f = pd.concat([d["parts"], d["det"]], axis=1)
        f["ctx"] = knn_score(ref, vecs[s])
        f["slide_id"] = s
        frames.append(f)
    df = pd.concat(frames, ignore_index=True)
    parts = [c for c in df.columns if c.startswith(("class:", "group:"))]
    df[parts] = df[parts].astype("boolean").fillna(False).astype(bool)
    # The fusion's normal reference: the normal-only slide of this split (all its patches are normal).
    normal_slide = [s for s in slides if not sheet.set_index("slide_id").annotations[s] or _normal_only(df, s)]
    ref_rows = df[df.slide_id.isin(normal_slide)]
    p_det = tail_p(df.det_z.to_numpy(), ref_rows.det_z.to_numpy())
    p_ctx = tail_p(df.ctx.to_numpy(), ref_rows.ctx.to_numpy())
    df["fisher"] = fusion.fused_score([p_det, p_ctx], "fisher")
    df["min_p"] = fusion.fused_score([p_det, p_ctx], "min_p")
    spec = {}
    for s in slides:
        rows = df[(df.slide_id == s) & df.normal]
        spec[s] = float((rows.ctx > q_cal).mean()) if len(rows) else float("nan")
    return df, spec, q_cal


def _normal_only(df: pd.DataFrame, slide: str) -> bool:
    return bool(df[df.slide_id == slide].normal.all())


SCORES = ["det_d2", "det_z", "ctx", "fisher", "min_p"]


def spec_means(spec: dict) -> dict:
    """Mean over runs of each slide's fraction of normal patches above the calibrate q0.999."""
    by_slide: dict[str, list] = {}
    for key, v in spec.items():
        by_slide.setdefault(key.split("/", 1)[1], []).append(v)
    return {s: float(np.mean(v)) for s, v in by_slide.items()}


ABBREV = {"foreign stain": "foreign", "same-stain tissue": "same", "artefacts": "artef",
          "Cell islands": "islands", "Magnified tissue": "magnif"}  # fmt: skip


def within_slide(df: pd.DataFrame, part: str, col: str) -> float:
    """Mean over the slides holding `part` of the AUROC against that slide's own normal patches: localisation alone,
    free of any shift of a whole slide's scores (a neighbourhood as large as the demo's slides is one)."""
    vals = []
    for _, f in df.groupby(["run", "slide_id"]):
        pos, neg = f[part].to_numpy(bool), f["normal"].to_numpy(bool)
        if pos.any() and neg.any():
            s = f[col].to_numpy(np.float64)
            vals.append(roc_auc_score(np.r_[np.ones(pos.sum()), np.zeros(neg.sum())], np.r_[s[pos], s[neg]]))
    return float(np.mean(vals)) if vals else float("nan")


def summary_row(name: str, res: dict, by_run: dict, spec: dict, within: dict) -> dict:
    """One line of the table: group AUROCs of the context score and the fusions, the same-stain classes, the
    same-stain group per run (the seed spread), and the specificity check."""
    row = {"setting": name}
    for g in GROUPS:
        for col in ("ctx", "fisher", "min_p"):
            row[f"{ABBREV[g]}:{col}"] = res.get(f"group:{g}", {}).get(col, np.nan)
    for c in ("Cell islands", "Magnified tissue"):
        row[f"{ABBREV[c]}:ctx"] = res.get(f"class:{c}", {}).get("ctx", np.nan)
    for run, r in by_run.items():
        row[f"same:ctx:{run}"] = r.get("group:same-stain tissue", {}).get("ctx", np.nan)
    row.update(within)
    for col in ("ctx", "fisher", "min_p"):
        row[f"mean3:{col}"] = np.nanmean([res.get(f"group:{g}", {}).get(col, np.nan) for g in GROUPS])
    for s, v in spec_means(spec).items():
        row[f">q999:{s.replace('demo_validation', 'val').replace('demo_', '')}"] = v
    return row


def print_detail(title: str, res: dict) -> None:
    print(f"\n{title}")
    cols = ["n_pos", *SCORES]
    print(f"{'part':32s}" + "".join(f"{c:>9s}" for c in cols))
    for part, r in res.items():
        print(f"{part:32s}" + "".join(f"{r.get(c, np.nan):9.3f}" if c != "n_pos" else f"{r[c]:9d}" for c in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, nargs="+", default=[Path(f"/tmp/bench3/macenko/seed{i}") for i in (1, 2)])
    ap.add_argument("--work", type=Path, default=Path("/tmp/proganomaly-bench-context"))
    ap.add_argument("--dense", type=int, default=3, help="patch grid refined by this factor (1: the tiling's own)")
    ap.add_argument("--settings", choices=["quick", "full"], default="quick")
    ap.add_argument("--choose", default=CHOSEN)
    ap.add_argument("--test", action="store_true", help="print the test slides' numbers for --choose, once, at the end")
    args = ap.parse_args()
    data, sheet = {}, None
    for run in args.runs:
        sheet = splits(run)
        method = stain_method(run)
        card = run / "results/export/model_card.json"
        out_px = int(pd.read_json(card, typ="series")["patch_size_px"]) if card.exists() else 64
        border = int(((yaml.safe_load((ROOT / "config/config.yaml").read_text()) or {}).get("calibration") or {})
                     .get("border_px", 0))  # fmt: skip
        data[run.name] = {}
        for row in sheet.itertuples():
            if not (run / f"results/tiles/{row.slide_id}.patches.parquet").exists():
                continue
            table, feats, mpp, secs = slide_features(run, args.work, row.slide_id, row.path, out_px, method, args.dense)
            data[run.name][row.slide_id] = {
                "table": table, "features": feats, "mpp": mpp, "seconds": secs,
                "parts": patch_parts(run, table, row.annotations),
                "det": detector_scores(run, row.slide_id, table, border),
            }  # fmt: skip
            print(f"{run.name} {row.slide_id:24s} {row.split:10s} {len(table):6d} patches, features {secs:6.1f} s "
                  f"({method}, {out_px} px)")  # fmt: skip
    grid = settings_grid(args.settings)
    if args.choose not in grid:
        grid[args.choose] = settings_grid("full")[args.choose]
    rows, detail = [], {}
    t0 = time.perf_counter()
    for name, (settings, k, st) in grid.items():
        df, spec = evaluate(data, sheet, settings, k, st, "validation")
        res = aurocs(df, SCORES)
        by_run = {run: aurocs(df[df.run == run], ["ctx"]) for run in data}
        within = {f"within:{ABBREV[p.split(':')[1]]}:{c}": within_slide(df, p, c) for p in
                  ("group:same-stain tissue", "group:artefacts") for c in ("ctx", "min_p")}  # fmt: skip
        rows.append(summary_row(name, res, by_run, spec, within))
        detail[name] = res
    print(f"\n{len(grid)} settings scored in {time.perf_counter() - t0:.1f} s")
    table = pd.DataFrame(rows).set_index("setting")
    with pd.option_context("display.width", 250, "display.max_columns", 60, "display.max_rows", 500):
        print("\nVALIDATION, pooled patch AUROC (ctx = context score; fisher / min_p = fused with the detector's z)")
        print(table.sort_values("same:ctx", ascending=False).round(3).to_string())
    base = aurocs(df, SCORES)  # the detector's columns do not depend on the setting
    print(
        "\nthe patch detector alone (same patches): "
        + ", ".join(
            f"{ABBREV.get(p.split(':')[1], p)} d2 {base[p]['det_d2']:.3f} / z {base[p]['det_z']:.3f}"
            for p in base
            if p.startswith("group:") or p in ("class:Cell islands", "class:Magnified tissue")
        )
    )
    print("the patch detector alone, within-slide (columns within:*): " + ", ".join(
        f"{ABBREV[p.split(':')[1]]}:{c} {within_slide(df, p, c):.3f}"
        for p in ("group:same-stain tissue", "group:artefacts") for c in ("det_d2", "det_z")))  # fmt: skip
    print_detail(f"VALIDATION, every part and score, chosen setting {args.choose}", detail[args.choose])
    if args.test:
        settings, k, st = grid[args.choose]
        df, spec = evaluate(data, sheet, settings, k, st, "test")
        print_detail(f"TEST (reported once, chosen setting {args.choose}; not used for any choice)", aurocs(df, SCORES))
        print("TEST fraction of normal patches above the calibrate q0.999:", spec)


if __name__ == "__main__":
    main()
