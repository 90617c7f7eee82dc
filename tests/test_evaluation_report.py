"""End to end: a pairs CSV beside a folder of images, a real metric on the tiny laion-aesthetic fixture,
the CLI commands, and the HTML report opened in headless Chromium."""

from __future__ import annotations

import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import prefscore
from prefscore.evaluation import Calibration, EvalConfig, calibrate, evaluate
from prefscore.evaluation.cli import register

from conftest import shared_fixture

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        """test app"""

    return app


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A user's folder: images/ (copies of the fixture images) and prefs.csv with relative paths (all 28
    pairs, no prompt column: an aesthetic study)."""
    fixture = shared_fixture("laion-aesthetic")
    root = tmp_path_factory.mktemp("study")
    (root / "images").mkdir()
    names = []
    for p in sorted((fixture / "images").iterdir()):
        shutil.copy(p, root / "images" / p.name)
        names.append(p.name)
    rows = []
    for k, (a, b) in enumerate(combinations(names, 2)):
        rows.append({"image_a": f"images/{a}", "image_b": f"images/{b}",
                     "label": ["a", "b", "a", "tie"][k % 4], "generator": ["sd15", "sdxl"][k % 2]})
    pd.DataFrame(rows).to_csv(root / "prefs.csv", index=False)
    return {"root": root, "model": fixture / "model", "images": [str(root / "images" / n) for n in names],
            "pairs": pd.DataFrame(rows)}


@pytest.fixture(scope="module")
def aesthetic(study):
    return prefscore.load("laion-aesthetic", model=study["model"])


@pytest.fixture(scope="module")
def score_file(study, aesthetic):
    """Precomputed scores: the real metric plus a second column (its negation with noise)."""
    s = aesthetic.score(study["images"])
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"image": study["images"], "laion-aesthetic": s,
                          "other": -s + rng.normal(0, 3, s.size), "clip-iqa": np.clip(rng.uniform(0, 1.4, s.size), 0, 1)})
    path = study["root"] / "scores.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_on_the_fly_metric_matches_its_scores(study, aesthetic):
    res = evaluate(study["root"] / "prefs.csv", metrics=["laion-aesthetic"], models={"laion-aesthetic": str(study["model"])},
                   config=EvalConfig(n_boot=200))
    expected = dict(zip(study["images"], aesthetic.score(study["images"])))
    got = res.item_scores
    for img, v in zip(got.images, got.values["laion-aesthetic"]):
        assert v == pytest.approx(expected[img], rel=1e-6)
    pairs = study["pairs"]
    human = pairs.label.map({"a": 1, "b": -1, "tie": 0}).to_numpy()
    d = np.array([expected[str(study["root"] / a)] - expected[str(study["root"] / b)] for a, b in zip(pairs.image_a, pairs.image_b)])
    strict = human != 0
    assert res.get("laion-aesthetic", "accuracy").estimate == pytest.approx(np.mean(np.sign(d[strict]) == human[strict]))
    assert res.table[res.table.group == "all"].units.max() == 28  # no prompts: every pair is its own unit


def test_composite_metric_loads_its_components(study, score_file, tmp_path):
    _, frame = score_file
    model = str(study["model"])
    cal = calibrate(frame, columns=["laion-aesthetic"], normaliser="robust", models={"laion-aesthetic": model})
    path = cal.save(tmp_path / "composite.json")
    metric = prefscore.load("composite", model=path)
    assert not metric.needs_prompt
    got = metric.score(study["images"])
    assert np.allclose(got, cal.apply(frame), rtol=1e-6, atol=1e-9)
    parts = metric.components(study["images"][:2])
    assert list(parts.columns) == ["laion-aesthetic", "laion-aesthetic:normalised", "composite"]
    # one image alone: the same value up to float32 batching noise (no normalisation by the batch)
    assert metric.score(study["images"][0]) == pytest.approx(got[0], rel=1e-4)


def _open_in_chromium(html: Path, screenshot: Path | None = None) -> dict:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) to check the report",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.resolve().as_uri())
            page.wait_for_load_state("load")
            info = page.evaluate("""() => ({
                title: document.title,
                sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
                agreementRows: document.querySelectorAll('#agreement-table tbody tr').length,
                testRows: document.querySelectorAll('#tests-table tbody tr').length,
                disagreementRows: document.querySelectorAll('#disagreement-table tbody tr').length,
                plots: document.querySelectorAll('img.plot').length,
                images: document.images.length,
                broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length,
                galleryImages: document.querySelectorAll('#galleries img').length,
                warnings: Array.from(document.querySelectorAll('.finding')).map(f => f.textContent),
            })""")
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    info["errors"] = errors
    info["requests"] = [u for u in requests if not u.startswith("data:")]
    return info


def test_cli_evaluate_writes_tables_and_a_self_contained_report(app, study, score_file):
    scores_path, _ = score_file
    out = study["root"] / "evaluation"
    result = CliRunner().invoke(app, ["evaluate", str(study["root"] / "prefs.csv"), "--scores", str(scores_path),
                                      "-c", "laion-aesthetic,other", "-g", "generator", "--bootstrap", "300", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Agreement with human pairs" in result.output and "laion-aesthetic" in result.output
    for name in ("agreement.csv", "agreement.json", "tests.csv", "item_scores.csv", "report.html", "correlations.csv",
                 "disagreement.csv", "report.json"):
        assert (out / name).is_file(), name
    data = json.loads((out / "agreement.json").read_text())
    api = evaluate(study["root"] / "prefs.csv", scores=scores_path, score_columns=["laion-aesthetic", "other"],
                   config=EvalConfig(n_boot=300, group_by=("generator",)))
    row = next(r for r in data["agreement"] if r["metric"] == "laion-aesthetic" and r["statistic"] == "accuracy" and r["group"] == "all")
    ref = api.get("laion-aesthetic", "accuracy")
    assert (row["estimate"], row["low"], row["high"]) == pytest.approx((ref.estimate, ref.low, ref.high))
    assert {r["level"] for r in data["agreement"]} == {"all", "sd15", "sdxl"}
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    info = _open_in_chromium(out / "report.html")
    assert info["errors"] == [] and info["requests"] == [(out / "report.html").resolve().as_uri()]
    assert info["title"] == "prefscore evaluation"
    assert {"warnings", "agreement", "distributions", "correlations", "disagreement", "galleries"} <= set(info["sections"])
    assert info["agreementRows"] == 2 and info["testRows"] == 2  # accuracy and accuracy_ties: a - b
    assert info["plots"] == 2 and info["broken"] == 0
    assert info["galleryImages"] == 2 * 8 and info["disagreementRows"] == 8  # 8 images: best-first gallery only


def test_cli_calibrate_and_report_with_reward_hacking_warning(app, study, score_file, tmp_path):
    scores_path, frame = score_file
    runner = CliRunner()
    cal_path = tmp_path / "cal.json"
    r = runner.invoke(app, ["calibrate", str(scores_path), "-o", str(cal_path), "-c", "laion-aesthetic,other",
                            "-n", "percentile", "-w", "laion-aesthetic=0.8", "-w", "other=0.2"])
    assert r.exit_code == 0, r.output
    cal = Calibration.load(cal_path)
    assert cal.weights == {"laion-aesthetic": 0.8, "other": 0.2} and cal.normaliser == "percentile"
    # learned weights from the human pairs
    r = runner.invoke(app, ["calibrate", str(scores_path), "-o", str(tmp_path / "fit.json"), "-c", "laion-aesthetic,other",
                            "--fit", str(study["root"] / "prefs.csv")])
    assert r.exit_code == 0, r.output
    assert Calibration.load(tmp_path / "fit.json").weights_from == "fit"
    # "after" optimisation: laion-aesthetic up, clip-iqa pinned at its upper limit and "other" down
    after = frame.assign(**{"laion-aesthetic": frame["laion-aesthetic"] + 20.0, "other": frame["other"] - 20.0,
                            "clip-iqa": 1.0})
    after.to_csv(tmp_path / "after.csv", index=False)
    html = tmp_path / "run" / "report.html"
    r = runner.invoke(app, ["report", str(tmp_path / "after.csv"), "--baseline", str(scores_path), "--target",
                            "laion-aesthetic", "--composite", str(cal_path), "-o", str(html), "--bootstrap", "200"])
    assert r.exit_code == 0, r.output
    assert "reward_hacking" in r.output
    assert (tmp_path / "run" / "report_tables" / "changes.csv").is_file()
    info = _open_in_chromium(html)
    assert info["errors"] == [] and info["broken"] == 0
    assert {"changes", "composite", "galleries"} <= set(info["sections"])
    assert any("held-out other fell" in w for w in info["warnings"])
    assert any("clip-iqa" in w and "upper limit" in w for w in info["warnings"])


def test_cli_reports_bad_input_clearly(app, study, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,image_a,image_b,label\nx,a.png,b.png,maybe\n")
    r = CliRunner().invoke(app, ["evaluate", str(bad), "-c", "m"])
    assert r.exit_code == 2
    assert "line 2" in r.output and "maybe" in r.output
