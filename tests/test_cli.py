"""The command line: prefscore metrics / score, as a user runs them."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import shared_fixture
from prefscore.cli import app

runner = CliRunner()


def test_metrics_table_and_json():
    result = runner.invoke(app, ["metrics"])
    assert result.exit_code == 0
    assert "laion-aesthetic" in result.stdout and "pickscore" in result.stdout
    result = runner.invoke(app, ["metrics", "--json"])
    rows = json.loads(result.stdout)
    assert {r["name"] for r in rows} >= {"hpsv2", "clip-iqa", "clipscore"}


@pytest.fixture()
def folder(tmp_path):
    src = shared_fixture("laion-aesthetic") / "images"
    d = tmp_path / "imgs"
    (d / "nested").mkdir(parents=True)
    for name in ("landscape.png", "gray.png"):
        (d / name).write_bytes((src / name).read_bytes())
    (d / "nested" / "tiny.png").write_bytes((src / "tiny.png").read_bytes())
    (d / "corrupt.jpg").write_bytes((src / "large.jpg").read_bytes()[:2000])
    (d / "notes.png").write_text("this is text")
    (d / "readme.txt").write_text("captions")
    return d


def test_score_folder_with_bad_files_csv(folder, tmp_path):
    model = shared_fixture("laion-aesthetic") / "model"
    out = tmp_path / "scores.csv"
    result = runner.invoke(app, ["score", str(folder), "-m", "laion-aesthetic", "--model", str(model), "-o", str(out)])
    assert result.exit_code == 3, result.output  # finished, with error rows
    rows = list(csv.DictReader(out.open()))
    by_name = {r["image"].split("/")[-1]: r for r in rows}
    assert set(by_name) == {"landscape.png", "gray.png", "tiny.png", "corrupt.jpg", "notes.png"}
    for good in ("landscape.png", "gray.png", "tiny.png"):
        assert by_name[good]["error"] == "" and float(by_name[good]["laion-aesthetic"])
    assert "truncated" in by_name["corrupt.jpg"]["error"]
    assert "not an image" in by_name["notes.png"]["error"]
    assert "readme.txt" in result.output  # reported as skipped, not silently ignored
    assert "3 scored, 2 failed" in result.output


def test_score_several_metrics_prompts_file_parquet_and_resume(folder, tmp_path):
    hps = shared_fixture("hpsv2") / "model"
    pick = shared_fixture("pickscore") / "model"
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("image,prompt\nimgs/landscape.png,a red fox\nimgs/gray.png,a grey cat\n")
    out = tmp_path / "s.parquet"
    args = ["score", "--prompts", str(prompts), "-m", "hpsv2,pickscore", "--model", f"hpsv2={hps}",
            "--model", f"pickscore={pick}", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pylist()
    assert [r["prompt"] for r in table] == ["a red fox", "a grey cat"]
    assert all(r["hpsv2"] is not None and r["pickscore"] is not None for r in table)
    again = runner.invoke(app, args + ["--resume"])
    assert again.exit_code == 0
    assert pq.read_table(out).to_pylist() == table


def test_resume_jsonl_skips_done_rows(folder, tmp_path):
    model = shared_fixture("laion-aesthetic") / "model"
    out = tmp_path / "s.jsonl"
    first = folder / "landscape.png"
    runner.invoke(app, ["score", str(first), "-m", "laion-aesthetic-v1", "--model", str(model), "-o", str(out)])
    before = out.read_text().splitlines()
    assert len(before) == 1
    result = runner.invoke(app, ["score", str(first), str(folder / "gray.png"), "-m", "laion-aesthetic-v1",
                                 "--model", str(model), "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == before[0] and len(lines) == 2
    assert json.loads(lines[1])["image"].endswith("gray.png")


def test_clip_iqa_axes_option(tmp_path):
    root = shared_fixture("clip-iqa")
    result = runner.invoke(app, ["score", str(root / "images" / "exact.png"), "-m", "clip-iqa", "--model", str(root / "model"),
                                 "--option", 'prompts=["quality", ["a sharp photo.", "a blurry photo."]]'])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert set(row) >= {"clip-iqa.quality", "clip-iqa.custom:a sharp photo.|a blurry photo."}


def test_clear_cli_errors(folder):
    result = runner.invoke(app, ["score", str(folder), "-m", "hpsv2", "--model", "x"])
    assert result.exit_code == 2 and "prompt" in result.output
    result = runner.invoke(app, ["score", str(folder), "-m", "nosuchmetric"])
    assert result.exit_code == 2 and "unknown metric" in result.output
    result = runner.invoke(app, ["score", str(folder), "-m", "hpsv2", "--prompt", "x"])
    assert result.exit_code == 2 and "--model DIR" in result.output


def test_train_then_score_with_the_model_directory(tmp_path):
    """`prefscore train` writes a directory that `prefscore score -m DIR` uses as a metric."""
    from prefscore.training.synthetic import make_pairs

    data = make_pairs(tmp_path / "data", n_scenes=8, pairs_per_scene=3)
    out = tmp_path / "model"
    result = runner.invoke(app, ["train", str(data.path), "--objective", "pairwise", "--backbone", "stats",
                                 "--head", "linear", "--out", str(out)])
    assert result.exit_code == 0, result.output
    image = next((tmp_path / "data" / "images").glob("*.png"))
    scored = runner.invoke(app, ["score", str(image), "-m", str(out)])
    assert scored.exit_code == 0, scored.output
    row = json.loads(scored.stdout)
    import prefscore

    assert row["model"] == pytest.approx(float(prefscore.load(out).score(image)), abs=1e-6)
