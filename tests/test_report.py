"""`snakemake --report` after the end-to-end demo run: every report figure is listed, unpacks, and renders in
headless Chromium (main page and item pages screenshotted into results/test_report/)."""

import json
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from system_packages import ensure_apt
from test_workflow import ROOT, snakemake

pytestmark = pytest.mark.slow

SHOTS = ROOT / "results" / "test_report"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
    "--hide-scrollbars",
]


def chromium() -> str:
    """Debian's chromium, apt-installed when missing and running as root; skip only where it cannot exist."""
    return ensure_apt("chromium", lambda: shutil.which("chromium") or shutil.which("chromium-browser"))


def run_chromium(*args: str, timeout: int = 180) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def screenshot(url: str, out: Path, size=(1400, 1000)) -> np.ndarray:
    out.parent.mkdir(parents=True, exist_ok=True)
    run_chromium(f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=20000", url)
    with Image.open(out) as im:
        return np.asarray(im.convert("L"), np.float64)


def script_json(html: str, name: str):
    """The JSON assigned in the report's `<script id="name">var name = ...;</script>` block."""
    m = re.search(rf'<script id="{name}">\s*var \w+ = (.*?);\s*</script>', html, re.S)
    assert m, f"no {name} block in report.html"
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def report(demo_run):
    """The zipped report of the demo run, unpacked; its results and categories as the page holds them."""
    snakemake(demo_run, "--cores", "2", "report_figures")
    snakemake(demo_run, "--cores", "1", "--report", "results/report.zip", "report_figures")
    snakemake(demo_run, "--cores", "1", "--report", "results/report.html", "report_figures")
    out = demo_run / "results" / "report_unzipped"
    shutil.rmtree(out, ignore_errors=True)
    with zipfile.ZipFile(demo_run / "results" / "report.zip") as z:
        z.extractall(out)
    page = next(out.rglob("report.html"))
    html = page.read_text()
    return {
        "page": page,
        "results": script_json(html, "results"),
        "categories": script_json(html, "categories"),
        "workdir": demo_run,
    }


def expected_items(workdir: Path) -> set[str]:
    """Report figures of this stage that the run made (all of results/report/ except helper tables and the SVG twins
    of the PNG figures)."""
    made = {str(p.relative_to(workdir)) for p in (workdir / "results" / "report").rglob("*") if p.is_file()}
    return {p for p in made if not p.endswith((".tsv", ".csv", ".svg"))}


def test_every_figure_is_a_report_item(report):
    results, workdir = report["results"], report["workdir"]
    expected = expected_items(workdir)
    assert {
        "results/report/software/config.yaml",
        "results/report/software/environments.html",
        "results/report/qc/main/patch_counts.png",
        "results/report/qc/main/slides.html",
    } <= expected
    missing = expected - set(results)
    assert not missing, f"figures made but not in the report: {sorted(missing)}"
    masks = {p for p in results if p.startswith("results/tiles/") and p.endswith(".mask.png")}
    sheet = (Path(__file__).resolve().parents[1] / "config" / "slides.tsv").read_text().splitlines()[1:]
    assert len(masks) == len([row for row in sheet if row.strip()])  # one tissue mask per slide of the sheet
    for path in expected:
        item = results[path]
        assert item["labels"], path  # labelled (slide, figure, ...) rather than by file name
        assert item["caption"].strip(), path
        assert (report["page"].parent / item["data_uri"]).is_file(), path
    cats = report["categories"]
    assert {"Data & QC", "Software and configuration"} <= set(cats)
    if any(p.startswith("results/report/training/") for p in expected):
        assert "Training" in cats
    if any(p.startswith("results/report/eval/") for p in expected):
        assert "Evaluation" in cats and "Slide maps" in cats


def test_every_mapped_slide_has_an_overlay_and_every_figure_an_svg_twin(report):
    """Issue 20: an overlay picture per slide that infer_slide maps (validation, test, threshold), in the report
    under its slide; each PNG figure of results/report/ has a vector copy beside it."""
    import csv
    import xml.etree.ElementTree as ET

    results, workdir = report["results"], report["workdir"]
    with open(workdir / "config" / "slides.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    mapped = [r["slide_id"] for r in rows if r["split"] in ("validation", "test", "threshold")]
    assert mapped
    for slide in mapped:
        item = results.get(f"results/report/overlays/{slide}.png")
        assert item, f"no overlay of mapped slide {slide} in the report"
        assert item["labels"].get("slide") == slide and item["labels"].get("map") == "overlay", item["labels"]
    pngs = list((workdir / "results" / "report").rglob("*.png"))
    lacking = [str(p) for p in pngs if not p.with_suffix(".svg").is_file()]
    assert pngs and not lacking, f"PNG figures without an SVG twin: {lacking}"
    for png in pngs[:5]:
        assert ET.parse(png.with_suffix(".svg")).getroot().tag.endswith("svg")
    assert "results/report/eval/metrics.csv" in results  # the full metrics, downloadable from the report


def test_methods_paragraph_renders_config_values(report):
    html = report["page"].read_text()
    desc = script_json(html, "workflow-desc")
    assert "{{" not in desc and "Methods" in desc
    cfg = (report["workdir"] / "results" / "report" / "software" / "config.yaml").read_text()
    seed = re.search(r"^seed: (\d+)", cfg, re.M).group(1)
    assert f"seed {seed}" in desc


def test_embedded_html_report_holds_the_same_items(report):
    html = (report["workdir"] / "results" / "report.html").read_text()
    embedded = script_json(html, "results")
    assert set(embedded) == set(report["results"])
    assert all(item["data_uri"].startswith("data:") for item in embedded.values())


def test_report_renders_in_chromium(report):
    page = report["page"]
    dom = run_chromium("--virtual-time-budget=20000", "--dump-dom", page.as_uri())
    # the React app ran: the navbar lists the categories (the static HTML only holds them inside a script)
    body = dom.split('<div id="app">', 1)[1]
    for category in report["categories"]:
        assert category.replace("&", "&amp;") in body, category
    main = screenshot(page.as_uri(), SHOTS / "report_main.png")
    assert main.std() > 5  # not a blank page


def test_every_item_renders_in_chromium(report):
    """A page of every item (images decoded by Chromium, HTML items loaded), then item pages of the app itself."""
    page, results = report["page"], report["results"]
    images = {p: r["data_uri"] for p, r in results.items() if r["mime_type"].startswith("image/")}
    check = page.with_name("check_items.html")
    check.write_text(
        "<!doctype html><html><body><pre id='status'>pending</pre>"
        + "".join(f'<img data-path="{p}" src="{uri}">' for p, uri in images.items())
        + "<script>window.addEventListener('load', () => { const s = {};"
        " document.querySelectorAll('img').forEach(i => s[i.dataset.path] = [i.naturalWidth, i.naturalHeight]);"
        " document.getElementById('status').textContent = JSON.stringify(s); });</script></body></html>"
    )
    dom = run_chromium("--virtual-time-budget=20000", "--dump-dom", check.as_uri())
    status = json.loads(re.search(r"<pre id=\"status\">(.*?)</pre>", dom, re.S).group(1).replace("&quot;", '"'))
    assert set(status) == set(images)
    blank = [p for p, (w, h) in status.items() if not (w > 0 and h > 0)]
    assert not blank, f"images Chromium could not decode: {blank}"

    for path, item in results.items():
        if item["mime_type"] == "text/html":
            dom = run_chromium("--virtual-time-budget=5000", "--dump-dom", (page.parent / item["data_uri"]).as_uri())
            assert "<table>" in dom and "<tr>" in dom, path

    # item pages inside the app: the report with a hook that opens one item, as a click on it would
    html = page.read_text()
    ours = sorted(p for p in images if p.startswith("results/report/"))
    for i, path in enumerate(ours[:3] + [p for p in ours[3:] if "grid" in p][:1]):
        hook = (
            f"<script>setTimeout(() => {{ app.showResultInfo({json.dumps(path)});"
            f" app.setView({{content: 'img', contentPath: results[{json.dumps(path)}].data_uri}}); }}, 500);</script></body>"
        )
        head, _, tail = html.rpartition("</body>")  # the last one: library sources contain the string too
        view = page.with_name(f"view_{i}.html")
        view.write_text(head + hook + tail)
        dom = run_chromium("--virtual-time-budget=20000", "--dump-dom", view.as_uri())
        app = dom.split('<div id="app">', 1)[1]
        assert f'<img src="{results[path]["data_uri"]}"' in app, path  # the app shows the item's image
        shot = screenshot(view.as_uri(), SHOTS / f"item_{Path(path).stem}.png")
        assert shot.std() > 5, path
