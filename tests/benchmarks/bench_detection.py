"""Detection benchmark: every registered scorer × anomaly class on the demo benchmark, over several seeds.

    .venv/bin/python tests/benchmarks/bench_detection.py [--seeds 1 2 3] [--scorers rgb_error,inpainting,...]
        [--variant NAME=overrides.yaml ...] [--work /tmp/proganomaly-bench-detection] [--out results/benchmarks]
        [--settings NAME=overrides.yaml ...] [--also OTHER_WORK/rows.json ...] [--summarise-only]

A scorer given as `combined=critic+texture_baseline` runs the combined scorer over those parts
(scoring.combined.scorers) on the same trained model; `SCORER@NAME` runs it with the overrides of `--settings
NAME=file.yaml` (τ, KDE and other settings after training), also on the same trained model. `--also` merges the
rows of other runs (e.g. variants run in another work directory at the same time) into the table;
`--summarise-only` runs nothing and only prints and writes the table of the rows there are.

For each seed the whole workflow runs once in its own directory (the seed makes the cohort, the patch order and the
initial weights), then once per scorer with `calibration.scorer` changed, so only calibration, export, inference,
maps and evaluation rerun: every scorer is judged on the same trained model, through the same threshold, maps and
evaluation as the default run. A variant (another patch size, no U-Net skips, longer training …) is a config
override file that retrains; it runs with every scorer too.

Numbers are pixel AUROC and average precision of the Mahalanobis d² map and of the KDE heat map, per anomaly class
and group against normal tissue, pooled over the validation slides and over the test slides (results/eval/pooled/
{validation,test}/metrics.json), as mean ± sample sd over seeds. With several detectors (`detectors:` in a variant's
overrides) the d² map is the fused score, and each detector alone is a map of its own, `detector:NAME` (its −log₁₀
tail probability, at the same pixels). The default scorer is to be chosen on validation
columns only. Train time is the train_reconstruction job's wall clock; inference time the calibration, export and
infer_slide jobs' wall clock (Snakemake benchmark files). Prints one table and writes detection.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("validation", "test")
MAPS = ("mahalanobis_d2", "kde")
# Maps evaluate_slide adds with several detectors, one per detector (proganomaly.maps.fused.DETECTOR_PREFIX).
DETECTOR_PREFIX = "detector:"
INFERENCE_RULES = ("fit_error_distribution", "fit_threshold", "export_model", "infer_slide")


def registered_scorers() -> list[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from proganomaly.scoring import SCORERS

    return sorted(SCORERS)


def run_workflow(work: Path, overrides: dict, targets: list[str], log: Path) -> float:
    """Run the workflow in `work` with the demo config plus `overrides`; returns wall seconds."""
    work.mkdir(parents=True, exist_ok=True)
    override = work / "override.yaml"
    override.write_text(yaml.safe_dump({"slides": str(ROOT / "config" / "slides.tsv"), **overrides}))
    cmd = [
        str(ROOT / ".venv" / "bin" / "snakemake"),
        "--snakefile", str(ROOT / "workflow" / "Snakefile"),
        "--directory", str(work),
        "--configfile", str(ROOT / "config" / "config.yaml"), str(override),
        "--cores", "2",
        "--rerun-incomplete",  # a bench stopped mid-run leaves its jobs incomplete; resuming redoes them
        *targets,
    ]  # fmt: skip
    start = time.perf_counter()
    with open(log, "a") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise WorkflowFailed(f"workflow failed in {work} (overrides {overrides}); see {log}")
    return time.perf_counter() - start


def job_seconds(work: Path, rules: tuple[str, ...]) -> float:
    total = 0.0
    for rule in rules:
        for tsv in (work / "results" / "benchmarks" / rule).glob("*.tsv"):
            total += float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
    return total


def pooled_scores(work: Path) -> dict:
    """{split: {level/name: {map: {auroc, ap}}}} from the pooled metrics, plus the all-anomalies row."""
    out = {}
    for split in SPLITS:
        path = work / "results" / "eval" / "pooled" / split / "metrics.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        maps = [*MAPS, *(k for k in m["pixel"] if k.startswith(DETECTOR_PREFIX))]
        rows = {"all": {k: _pick(m["pixel"][k]) for k in maps}}
        for level, named in m.get("per_class", {}).items():
            for name, res in named.items():
                rows[f"{level}:{name}"] = {k: _pick(res["pixel"][k]) for k in maps if k in res["pixel"]}
        spec = m.get("specificity")
        if spec:
            rows["specificity"] = {k: spec.get(k) for k in SPECIFICITY}
        out[split] = rows
    return out


# What the benchmark records of each split's "specificity" block (pool_metrics), in its tables' order: normal-only
# slides (tissue inside predicted polygons, flagged by τ, KDE above 0.25 of its scale), false-positive area per mm² of
# tissue, lesions hit, F1 at the validation-chosen operating point beside the F1 of flagging everything.
SPECIFICITY = (
    "normal_tissue_in_polygons",
    "normal_tissue_flagged",
    "kde_above_0.25",
    "fp_area_mm2_per_mm2",
    "lesion_sensitivity",
    "f1_at_operating_point",
    "f1_flag_everything",
    "best_f1",
)


def _pick(res: dict) -> dict:
    return {"auroc": res.get("auroc"), "ap": res.get("average_precision")}


def targets() -> list[str]:
    return [f"results/eval/pooled/{split}/metrics.json" for split in SPLITS]


def scorer_overrides(spec: str, settings: dict[str, dict] | None = None) -> tuple[str, dict]:
    """`name`, `combined=a+b`, each optionally `@SETTINGS` (a --settings name): (the scorer, its config overrides)."""
    spec, _, setting = spec.partition("@")
    name, _, parts = spec.partition("=")
    overrides: dict = {"calibration": {"scorer": name}}
    if parts:
        if name != "combined":
            raise SystemExit(f"--scorers {spec!r}: only `combined` takes parts (combined=a+b)")
        overrides["scoring"] = {"combined": {"scorers": parts.split("+")}}
    if setting:
        if setting not in (settings or {}):
            raise SystemExit(f"--scorers {spec}@{setting}: no --settings {setting}=FILE.yaml was given")
        overrides = _merge(settings[setting], overrides)
    return name, overrides


def bench(seeds, scorers, variants, work_root: Path, log: Path, settings: dict | None = None) -> list[dict]:
    """One row per (variant, seed, scorer); rows already in work_root/rows.json are kept, not rerun."""
    saved = work_root / "rows.json"
    rows = json.loads(saved.read_text()) if saved.is_file() else []
    done = {(r["variant"], r["seed"], r["scorer"]) for r in rows}
    for variant, overrides in variants.items():
        for seed in seeds:
            work = work_root / variant / f"seed{seed}"
            for scorer in scorers:
                if (variant, seed, scorer) in done:
                    continue
                cfg = _merge(overrides, {"seed": seed, **scorer_overrides(scorer, settings)[1]})
                print(f"[bench] {variant} seed {seed} scorer {scorer}", flush=True)
                row = {"variant": variant, "seed": seed, "scorer": scorer}
                try:
                    row["wall_s"] = run_workflow(work, cfg, targets(), log)
                except WorkflowFailed as err:
                    # A scorer this model cannot serve (e.g. latent_distance without an encoder) is recorded, and
                    # the others still run.
                    row["error"] = str(err)
                    print(f"[bench] failed: {err}", flush=True)
                else:
                    row["train_s"] = job_seconds(work, ("train_reconstruction",))
                    row["inference_s"] = job_seconds(work, INFERENCE_RULES)
                    row["scores"] = pooled_scores(work)
                rows.append(row)
                saved.write_text(json.dumps(rows, indent=1))
    return rows


class WorkflowFailed(RuntimeError):
    pass


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def summarise(rows: list[dict]) -> pd.DataFrame:
    flat = []
    for r in rows:
        for split, parts in r.get("scores", {}).items():
            for part, maps in _auroc_parts(parts):
                for name, val in maps.items():
                    flat.append({**{k: r[k] for k in ("variant", "scorer", "seed", "train_s", "inference_s")},
                                 "split": split, "part": part, "map": name, **val})  # fmt: skip
    df = pd.DataFrame(flat)

    def agg(s):
        vals = [v for v in s if v is not None and v == v]
        if not vals:
            return ""
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.3f} ± {sd:.3f}"

    table = df.pivot_table(
        index=["variant", "scorer", "map", "part"], columns="split", values=["auroc", "ap"], aggfunc=agg
    )
    times = df.groupby(["variant", "scorer"])[["train_s", "inference_s"]].median()
    return table, times


def json_summary(rows: list[dict]) -> dict:
    """{variant: {scorer: {part: {split: {map: {auroc_mean, auroc_sd, ap_mean, ap_sd, n}}}}}}"""
    acc: dict = {}
    for r in rows:
        for split, parts in r.get("scores", {}).items():
            for part, maps in _auroc_parts(parts):
                for name, val in maps.items():
                    cell = acc.setdefault(r["variant"], {}).setdefault(r["scorer"], {}).setdefault(part, {})
                    cell = cell.setdefault(split, {}).setdefault(name, {"auroc": [], "ap": []})
                    for k in ("auroc", "ap"):
                        if val[k] is not None:
                            cell[k].append(val[k])
    out: dict = {}
    for variant, scorers in acc.items():
        for scorer, parts in scorers.items():
            for part, splits in parts.items():
                for split, maps in splits.items():
                    for name, vals in maps.items():
                        stats = {}
                        for k in ("auroc", "ap"):
                            v = vals[k]
                            stats[f"{k}_mean"] = statistics.mean(v) if v else None
                            stats[f"{k}_sd"] = statistics.stdev(v) if len(v) > 1 else 0.0
                        stats["n"] = len(vals["auroc"])
                        out.setdefault(variant, {}).setdefault(scorer, {}).setdefault(part, {}).setdefault(split, {})[
                            name
                        ] = stats
    return out


def _auroc_parts(parts: dict):
    return [(part, maps) for part, maps in parts.items() if part != "specificity"]


def _mean_sd(values: list) -> dict:
    v = [x for x in values if x is not None and x == x]
    return {
        "mean": statistics.mean(v) if v else None,
        "sd": statistics.stdev(v) if len(v) > 1 else 0.0 if v else None,
        "n": len(v),
    }


def specificity_summary(rows: list[dict]) -> dict:
    """{variant: {scorer: {split: {key: {mean, sd, n}}}}} of the SPECIFICITY keys over seeds."""
    acc: dict = {}
    for r in rows:
        for split, parts in r.get("scores", {}).items():
            for key, value in (parts.get("specificity") or {}).items():
                cell = acc.setdefault(r["variant"], {}).setdefault(r["scorer"], {}).setdefault(split, {})
                cell.setdefault(key, []).append(value)
    return {
        variant: {
            scorer: {split: {k: _mean_sd(v) for k, v in keys.items()} for split, keys in splits.items()}
            for scorer, splits in scorers.items()
        }
        for variant, scorers in acc.items()
    }


def specificity_table(spec: dict) -> pd.DataFrame:
    """One row per variant × scorer × split, one column per SPECIFICITY key: mean ± sd (n seeds)."""
    out = []
    for variant, scorers in spec.items():
        for scorer, splits in scorers.items():
            for split, keys in sorted(splits.items()):
                row = {"variant": variant, "scorer": scorer, "split": split}
                for k in SPECIFICITY:
                    c = keys.get(k) or {}
                    row[k] = "" if c.get("mean") is None else f"{c['mean']:.3f} ± {c['sd']:.3f}"
                row["seeds"] = max((c.get("n", 0) for c in keys.values()), default=0)
                out.append(row)
    return pd.DataFrame(out)


# Issue 18's acceptance levels, applied to the VALIDATION split when choosing (test only reports).
MAX_NORMAL_IN_POLYGONS = 0.02
MAX_KDE_HOT = 0.05


def specific_choice(spec: dict, summary: dict) -> list[tuple]:
    """(specific, seeds, F1 at the operating point, group AUROC, variant, scorer), best first, from the validation
    split only. Fixed before the runs: a configuration is specific when its normal-only validation slides have at
    most MAX_NORMAL_IN_POLYGONS of their tissue inside predicted polygons and at most MAX_KDE_HOT with the heat map
    above 0.25; specific ones rank first, then more seeds, then the validation F1 at the operating point, then the
    mean group AUROC of d² (validation_choice's criterion)."""
    auroc = {(v, sc): (n, c) for n, c, v, sc in validation_choice(summary)}
    ranked = []
    for variant, scorers in spec.items():
        for scorer, splits in scorers.items():
            val = splits.get("validation") or {}

            def mean(key, val=val):
                return (val.get(key) or {}).get("mean")

            inside, hot, f1 = mean("normal_tissue_in_polygons"), mean("kde_above_0.25"), mean("f1_at_operating_point")
            specific = (
                inside is not None and hot is not None and inside <= MAX_NORMAL_IN_POLYGONS and hot <= MAX_KDE_HOT
            )
            n = (val.get("f1_at_operating_point") or {}).get("n", 0)
            crit = auroc.get((variant, scorer), (0, float("nan")))[1]
            ranked.append((specific, n, -1.0 if f1 is None else f1, crit, variant, scorer))
    return sorted(ranked, key=lambda t: (t[0], t[1], t[2], t[3] if t[3] == t[3] else -1.0), reverse=True)


GROUPS = ("group:foreign stain", "group:same-stain tissue", "group:artefacts")


def validation_choice(summary: dict, map_name: str = "mahalanobis_d2") -> list[tuple[int, float, str, str]]:
    """(seeds, criterion, variant, scorer), best first. The criterion, fixed before any run: the mean over the three
    anomaly groups of the validation pixel AUROC of `map_name` (each a mean over seeds); test columns play no part.
    Rows measured on more seeds rank first: a one-seed number is not comparable with a three-seed mean."""
    ranked = []
    for variant, scorers in summary.items():
        for scorer, parts in scorers.items():
            cells = [((parts.get(g) or {}).get("validation") or {}).get(map_name, {}) for g in GROUPS]
            vals = [c.get("auroc_mean") for c in cells]
            if all(v is not None for v in vals):
                ranked.append((min(c.get("n", 0) for c in cells), statistics.mean(vals), variant, scorer))
    return sorted(ranked, reverse=True)


def detector_maps(summary: dict) -> list[str]:
    """The maps of single detectors (`detector:NAME`) in a json_summary, in first-seen order."""
    seen: list[str] = []
    for scorers in summary.values():
        for parts in scorers.values():
            for splits in parts.values():
                for maps in splits.values():
                    seen += [m for m in maps if m.startswith(DETECTOR_PREFIX) and m not in seen]
    return seen


def markdown_tables(summary: dict, times: pd.DataFrame, spec: dict | None = None) -> str:
    """Markdown: per map (with several detectors, each detector alone too), the report's comparison table (a row per
    group × variant × scorer, mean ± sd over seeds, seeds counted), then the times."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from proganomaly.report.scorers import comparison_table

    def rows(df: pd.DataFrame) -> list[str]:
        head = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
        return head + [
            "| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in df.itertuples(index=False)
        ]

    detectors = detector_maps(summary)
    labels = [("mahalanobis_d2", "d² map (the fused score where several detectors ran)" if detectors else "d² map"),
              ("kde", "KDE heat map")]  # fmt: skip
    labels += [(m, f"{m.removeprefix(DETECTOR_PREFIX)} detector alone") for m in detectors]
    out = []
    for name, label in labels:
        table = comparison_table(summary, name)
        if name in detectors:  # runs with one detector have no such map
            table = table[table["seeds"] > 0]
        out += [f"### Pixel AUROC and AP of the {label}, per group (mean ± sd over seeds)", ""]
        out += [*rows(table), ""]
    if spec:
        out += ["### Specificity and F1 at the operating point (mean ± sd over seeds)", ""]
        out += [*rows(specificity_table(spec)), ""]
    out += ["### Median seconds per run", ""]
    out += rows(times.round(0).astype(int).reset_index())
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--scorers", default=None, help="comma-separated; default: every registered scorer")
    ap.add_argument("--variant", action="append", default=[], help="NAME=override.yaml (retrains)")
    ap.add_argument("--no-default", action="store_true", help="skip the default (unmodified) configuration")
    ap.add_argument("--work", type=Path, default=Path("/tmp/proganomaly-bench-detection"))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    ap.add_argument("--fresh", action="store_true", help="delete the work directory first")
    ap.add_argument(
        "--settings",
        action="append",
        default=[],
        help="NAME=override.yaml of scorer-stage settings (τ, KDE …) used as SCORER@NAME in --scorers (no retraining)",
    )
    ap.add_argument("--also", type=Path, action="append", default=[], help="rows.json of another run to merge")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the tables as markdown here")
    ap.add_argument("--summarise-only", action="store_true", help="run nothing; table the rows there are")
    ap.add_argument(
        "--coarse-grid",
        action="store_true",
        help="evaluate a 3 × 1 threshold × dilation grid: pixel AUROC/AP do not depend on the grid; saves minutes",
    )
    args = ap.parse_args()
    scorers = args.scorers.split(",") if args.scorers else registered_scorers()
    variants = {} if args.no_default else {"default": {}}
    for spec in args.variant:
        name, _, path = spec.partition("=")
        variants[name] = yaml.safe_load(Path(path).read_text()) or {}
    if args.coarse_grid:
        grid = {"evaluation": {"thresholds": [0.0, 0.1, 0.2], "dilations": [1.0]}}
        variants = {name: _merge(grid, overrides) for name, overrides in variants.items()}
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.summarise_only:
        saved = args.work / "rows.json"
        rows = json.loads(saved.read_text()) if saved.is_file() else []
    else:
        settings = {}
        for spec in args.settings:
            name, _, path = spec.partition("=")
            settings[name] = yaml.safe_load(Path(path).read_text()) or {}
        rows = bench(args.seeds, scorers, variants, args.work, args.work / "workflow.log", settings)
    for other in args.also:
        rows += json.loads(other.read_text())
    table, times = summarise(rows)
    pd.set_option("display.width", 250, "display.max_rows", 500, "display.max_columns", 20)
    print(table.to_string())
    print("\nmedian seconds per run (train: train_reconstruction; inference: calibration, export, infer_slide)")
    print(times.round(1).to_string())
    summary = json_summary(rows)
    spec = specificity_summary(rows)
    print("\nspecificity (normal-only slides; F1 at the validation-chosen operating point beside flagging everything)")
    print(specificity_table(spec).to_string(index=False))
    print("\nspecific choice (validation only: specific?, seeds, F1 at operating point, group AUROC of d²):")
    for specific, n, f1, crit, variant, scorer in specific_choice(spec, summary):
        print(f"  {'yes' if specific else 'no ':>3}  {n} seeds  F1 {f1:.3f}  AUROC {crit:.3f}  {variant:>14}  {scorer}")
    print("\nvalidation choice (most seeds first; mean over groups of validation pixel AUROC, d² map | KDE map):")
    kde = {(v, sc): c for _, c, v, sc in validation_choice(summary, "kde")}
    for n, crit, variant, scorer in validation_choice(summary):
        print(f"  {n} seeds  {crit:.3f} | {kde.get((variant, scorer), float('nan')):.3f}  {variant:>14}  {scorer}")
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    seeds = sorted({r["seed"] for r in rows})
    what = (f"pixel AUROC / AP pooled per split, {len(rows)} workflow runs over seeds {seeds} at commit "
            f"{commit.strip() or 'unknown'}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    record = {"what": what, "seeds": seeds, "scorers": sorted({r["scorer"] for r in rows}),
              "variants": variants, "rows": rows, "summary": summary, "specificity": spec}  # fmt: skip
    (args.out / "detection.json").write_text(json.dumps(record, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown_tables(summary, times, spec))
    print(f"\nwrote {args.out / 'detection.json'}")


if __name__ == "__main__":
    main()
