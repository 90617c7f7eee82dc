"""Nothing lost, nothing run that shouldn't be: decompression bombs, resume (metric sets, partial
records, kill -9, path and prompt keys), folder scans, prompts files, truncated prompts, output checks."""

from __future__ import annotations

import csv
import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import prefscore
from conftest import REPO, read_jsonl, shared_fixture
from prefscore.cli import app
from prefscore.errors import ImageError, PromptTruncationWarning, ScoringError
from prefscore.images import DEFAULT_MAX_PIXELS, check_image, find_images, load_image, set_max_pixels
from prefscore.output import KILL_AFTER_COMMITS, parts_dir
from prefscore.scoring import ScoreJob

runner = CliRunner()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB pixels, with a few rows of data: a
    decompression bomb of a few hundred bytes (Pillow refuses it at open, before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    rows = b"".join(comp.compress(b"\x00" * (1 + 3 * width)) for _ in range(2)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


BOMB = png_declaring(30000, 30000)  # 900 megapixels, over Pillow's 178-megapixel limit


@pytest.fixture(scope="module")
def model_dir():
    return shared_fixture("laion-aesthetic") / "model"


@pytest.fixture(scope="module")
def metrics(model_dir):
    return {"v1": prefscore.load("laion-aesthetic-v1", model=str(model_dir)),
            "v2": prefscore.load("laion-aesthetic", model=str(model_dir))}


@pytest.fixture()
def images(tmp_path):
    """Four good images and a bomb in a folder."""
    src = shared_fixture("laion-aesthetic") / "images"
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("landscape.png", "gray.png", "tiny.png", "portrait.png"):
        (d / name).write_bytes((src / name).read_bytes())
    (d / "zbomb.png").write_bytes(BOMB)
    return d


def said(result, text: str) -> bool:
    """``text`` is in the command's output (rich wraps long lines, in boxes for usage errors: compared
    without whitespace and box borders)."""
    return "".join(text.split()) in "".join(result.output.replace("│", " ").split())


def good(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name != "zbomb.png")


class Forbidden:
    """Stands in for a metric's forward to prove it is not run."""

    def __init__(self, metric, monkeypatch):
        monkeypatch.setattr(metric, "forward", self)

    def __call__(self, *args, **kwargs):
        raise AssertionError("this metric should not have been run")


# -- 1. decompression bombs ----------------------------------------------------------------------------
def test_bomb_is_small_and_refused_with_its_size():
    assert len(BOMB) < 1000
    with pytest.raises(ImageError, match=r"too many pixels: 900,000,000 pixels, over the limit of 178,956,970"):
        load_image(BOMB, "bomb")
    assert DEFAULT_MAX_PIXELS == 178_956_970


def test_bomb_through_the_api_is_a_nan_row(metrics, images):
    paths = [images / "landscape.png", images / "zbomb.png", images / "gray.png"]
    out = metrics["v1"].score(paths, on_error="nan")
    assert math.isfinite(out[0]) and math.isnan(out[1]) and math.isfinite(out[2])
    with pytest.raises(ScoringError) as info:
        metrics["v1"].score(paths)
    assert [(i, why.startswith("too many pixels")) for i, _, why in info.value.errors] == [(1, True)]


def test_max_pixels_lowers_and_raises_the_limit(images):
    tiny = images / "tiny.png"
    w, h = Image.open(tiny).size
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(tiny, max_pixels=w * h - 1)
    assert load_image(tiny, max_pixels=w * h).size == (w, h)
    old = set_max_pixels(w * h - 1)
    try:
        with pytest.raises(ImageError, match="too many pixels"):
            load_image(tiny)
    finally:
        set_max_pixels(old)
    # a real panorama over Pillow's own guard: allowed once the limit is raised (header check only here)
    (images / "pano.png").write_bytes(png_declaring(20000, 10000))
    with pytest.raises(ImageError, match="too many pixels"):
        check_image(images / "pano.png")
    assert check_image(images / "pano.png", max_pixels=300_000_000) == (20000, 10000)
    with pytest.raises(ValueError):
        set_max_pixels(0)


def test_bomb_through_score_cli_and_resume(model_dir, images, tmp_path):
    out = tmp_path / "s.jsonl"
    args = ["score", str(images), "-m", "laion-aesthetic-v1", "--model", str(model_dir), "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output  # finished with an error row
    rows = {Path(r["image"]).name: r for r in read_jsonl(out)}
    assert len(rows) == 5 and rows["zbomb.png"]["error"].startswith("too many pixels")
    assert all(r["laion-aesthetic-v1"] is not None for n, r in rows.items() if n != "zbomb.png")
    again = runner.invoke(app, args + ["--resume"])
    assert again.exit_code == 3, again.output
    assert read_jsonl(out) == list(rows.values())
    low = runner.invoke(app, ["--max-pixels", "100", "score", str(images / "tiny.png"), "-m", "laion-aesthetic-v1",
                              "--model", str(model_dir)])
    set_max_pixels(None)
    assert low.exit_code == 3 and said(low, "too many pixels")


def test_bomb_through_train_evaluate_calibrate_report_and_annotate(model_dir, images, tmp_path):
    from prefscore.annotate.inputs import AnnotationInputError, load_candidates
    from prefscore.training.synthetic import make_pairs

    # train: the embedding cache reports the bomb like any unreadable image (a clear error, no traceback)
    data = make_pairs(tmp_path / "data", n_scenes=4, pairs_per_scene=2)
    victim = sorted((tmp_path / "data" / "images").glob("*.png"))[0]
    victim.write_bytes(BOMB)
    trained = runner.invoke(app, ["train", str(data.path), "--objective", "pairwise", "--backbone", "stats",
                                  "--head", "linear", "--out", str(tmp_path / "m")])
    assert isinstance(trained.exception, SystemExit), trained.exception
    assert trained.exit_code != 0 and said(trained, f"{victim.name}: too many pixels")

    # evaluate -m: the bomb's pairs cannot be scored; the others are evaluated
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("prompt,image_a,image_b,label\n"
                     "p1,imgs/landscape.png,imgs/gray.png,a\np2,imgs/tiny.png,imgs/portrait.png,b\np3,imgs/zbomb.png,imgs/gray.png,a\n")
    evaluated = runner.invoke(app, ["evaluate", str(pairs), "-m", "laion-aesthetic-v1", "--model", str(model_dir),
                                    "--bootstrap", "0", "-o", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    assert said(evaluated, "could not score") and said(evaluated, "zbomb.png: laion-aesthetic-v1: too many pixels")

    # calibrate on a folder holding the bomb: reported, the rest calibrates
    calibrated = runner.invoke(app, ["calibrate", str(images), "-m", "laion-aesthetic-v1", "--model", str(model_dir),
                                     "-o", str(tmp_path / "cal.json")])
    assert calibrated.exit_code == 0, calibrated.output
    assert said(calibrated, "zbomb.png:") and said(calibrated, "too many pixels")

    # report: the bomb's thumbnail is "image unavailable"
    scores = tmp_path / "scores.csv"
    scores.write_text("image,laion-aesthetic-v1\n" + "".join(f"{p},{k}\n" for k, p in enumerate(sorted(images.iterdir()))))
    reported = runner.invoke(app, ["report", str(scores), "-o", str(tmp_path / "r.html")])
    assert reported.exit_code == 0, reported.output
    assert "image unavailable" in (tmp_path / "r.html").read_text()

    # annotate: registering a folder with the bomb names it (before any server starts)
    ann = tmp_path / "ann" / "p1"
    ann.mkdir(parents=True)
    (ann / "prompt.txt").write_text("a prompt")
    (ann / "gen-a.png").write_bytes((images / "gray.png").read_bytes())
    (ann / "gen-b.png").write_bytes(BOMB)
    with pytest.raises(AnnotationInputError, match="gen-b.png.*too many pixels"):
        load_candidates(tmp_path / "ann")


# -- 2. resume with another metric set -----------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_resume_with_another_metric_set_scores_only_the_missing_cells(metrics, images, tmp_path, suffix, monkeypatch):
    paths = good(images)
    out = tmp_path / f"s{suffix}"
    first = ScoreJob({"v1": metrics["v1"]}, batch_size=2).run(paths[:3], output=out)
    fresh = ScoreJob(metrics, batch_size=2).run(paths)
    with monkeypatch.context() as m:
        Forbidden(metrics["v1"], m)  # v1 is only needed for the image the first run did not see...
        job = ScoreJob({"v2": metrics["v2"]}, batch_size=2)
        job.run(paths[:3], output=out, resume=True)  # ...and not at all here
    assert any("lack metric(s) v2" in n for n in job.notes) and any("added column(s) v2" in n for n in job.notes)
    rows = ScoreJob(metrics, batch_size=2).run(paths, output=out, resume=True)
    written = read_rows(out)
    assert list(written[0]) == ["image", "v1", "v2", "error"]
    assert [r["image"] for r in written] == [str(p) for p in paths] == [r["image"] for r in rows]
    for r, f in zip(written, fresh):  # other batch compositions: float32 sums in another order
        assert r["v1"] == pytest.approx(f["v1"], rel=1e-4, abs=1e-4) and r["v2"] == pytest.approx(f["v2"], rel=1e-4, abs=1e-4)
    assert [r["v1"] for r in written[:3]] == pytest.approx([r["v1"] for r in first], rel=1e-12)
    # resuming with the first metric alone keeps the second's column and values
    ScoreJob({"v1": metrics["v1"]}, batch_size=2).run(paths, output=out, resume=True)
    assert read_rows(out) == written


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            return [{k: (None if v == "" else v if k in ("image", "prompt", "error") else float(v)) for k, v in r.items()}
                    for r in csv.DictReader(fh)]
    return pq.read_table(path).to_pylist()


# -- 3. partial last record --------------------------------------------------------------------------
def test_resume_drops_a_partial_jsonl_line(metrics, images, tmp_path):
    paths = good(images)
    out = tmp_path / "s.jsonl"
    ScoreJob({"v1": metrics["v1"]}).run(paths[:2], output=out)
    whole = out.read_text()
    out.write_text(whole + whole.splitlines()[0][:25])  # a crash in the middle of writing a third row
    job = ScoreJob({"v1": metrics["v1"]})
    job.run(paths, output=out, resume=True)
    assert any("incomplete last line" in n for n in job.notes)
    rows = read_jsonl(out)  # every line parses
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    ScoreJob({"v1": metrics["v1"]}).run(paths, output=out, resume=True)
    assert read_jsonl(out) == rows  # no duplicates on a later resume


def test_resume_drops_a_truncated_csv_score(metrics, images, tmp_path):
    paths = good(images)
    out = tmp_path / "s.csv"
    full = ScoreJob({"v1": metrics["v1"]}).run(paths[:2], output=out)
    text = out.read_text()
    value = repr(full[1]["v1"])
    cut = text.rindex(value) + 3  # "...,4.6" : a score cut mid-number by a crash
    out.write_text(text[:cut])
    job = ScoreJob({"v1": metrics["v1"]})
    job.run(paths[:2], output=out, resume=True)
    assert any("incomplete last record" in n for n in job.notes)
    rows = read_rows(out)
    # rescored alone, not in a batch of two: float32 sums in another order
    assert len(rows) == 2 and rows[1]["v1"] == pytest.approx(full[1]["v1"], rel=1e-4, abs=1e-4)
    # an unterminated quoted field (a multi-line prompt cut after its newline) is dropped too
    out2 = tmp_path / "q.csv"
    ScoreJob({"v1": metrics["v1"]}).run(paths[:1], prompts="line one\nline two", output=out2)
    text = out2.read_text()
    out2.write_text(text + f'{paths[1]},"half a prompt\n')
    rows = ScoreJob({"v1": metrics["v1"]}).run(paths[:2], prompts="line one\nline two", output=out2, resume=True)
    assert [r["prompt"] for r in read_rows(out2)] == ["line one\nline two"] * 2 and len(rows) == 2


def test_a_bad_record_before_the_last_is_an_error(metrics, images, tmp_path):
    out = tmp_path / "s.jsonl"
    ScoreJob({"v1": metrics["v1"]}).run(good(images)[:2], output=out)
    lines = out.read_text().splitlines()
    out.write_text("garbage\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"s.jsonl: line 1 is not a result row"):
        ScoreJob({"v1": metrics["v1"]}).run(good(images), output=out, resume=True)


# -- 4. kill -9 ------------------------------------------------------------------------------------------
KILLED_RUN = textwrap.dedent("""
    import sys
    from pathlib import Path
    import prefscore
    from prefscore.scoring import ScoreJob

    model, out, *paths = sys.argv[1:]
    job = ScoreJob({"v1": prefscore.load("laion-aesthetic-v1", model=model)}, batch_size=2, chunk_size=2)
    job.run([Path(p) for p in paths], output=Path(out))
""")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_kill_9_keeps_the_committed_rows_and_resume_completes(metrics, model_dir, images, tmp_path, suffix):
    paths = good(images)
    out = tmp_path / f"s{suffix}"
    env = {**os.environ, KILL_AFTER_COMMITS: "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(model_dir), str(out), *map(str, paths)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr  # killed itself after committing the first chunk
    job = ScoreJob({"v1": metrics["v1"]}, batch_size=2)
    rows = job.run(paths, output=out, resume=True)
    assert any("2 image(s) already scored" in n for n in job.notes)
    fresh = ScoreJob({"v1": metrics["v1"]}).run(paths)
    assert [r["image"] for r in read_rows(out)] == [r["image"] for r in rows] == [str(p) for p in paths]
    assert [r["v1"] for r in read_rows(out)] == pytest.approx([r["v1"] for r in fresh], rel=1e-4, abs=1e-4)  # other batches
    assert not parts_dir(out).exists()


def test_parquet_killed_leaves_committed_parts_not_a_partial_file(model_dir, images, tmp_path):
    out = tmp_path / "s.parquet"
    env = {**os.environ, KILL_AFTER_COMMITS: "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", KILLED_RUN, str(model_dir), str(out), *map(str, good(images))], env=env, check=False)
    assert not out.exists()
    parts = sorted(parts_dir(out).glob("part-*.parquet"))
    assert len(parts) == 1 and pq.read_table(parts[0]).num_rows == 2


# -- 5. resume keys: resolved path and prompt -------------------------------------------------------
def test_resume_matches_the_resolved_path(metrics, images, tmp_path, monkeypatch):
    monkeypatch.chdir(images.parent)
    out = tmp_path / "s.jsonl"
    ScoreJob({"v1": metrics["v1"]}).run([Path("imgs") / p.name for p in good(images)], output=out)
    with monkeypatch.context() as m:
        Forbidden(metrics["v1"], m)
        job = ScoreJob({"v1": metrics["v1"]})
        job.run([p.resolve() for p in good(images)], output=out, resume=True)
    assert job.notes == [f"resume: 4 image(s) already scored in {out}: skipped"]
    assert len(read_jsonl(out)) == 4


def test_resume_with_a_changed_prompt_scores_the_new_prompt_and_says_so(metrics, images, tmp_path):
    paths = good(images)[:2]
    out = tmp_path / "s.csv"
    ScoreJob({"v1": metrics["v1"]}).run(paths, prompts="old prompt", output=out)
    job = ScoreJob({"v1": metrics["v1"]})
    job.run(paths, prompts="new prompt", output=out, resume=True)
    assert any("2 of them are these images under another prompt (e.g. 'old prompt')" in n for n in job.notes)
    assert [r["prompt"] for r in read_rows(out)] == ["old prompt"] * 2 + ["new prompt"] * 2


def test_cli_prints_what_resume_skipped(model_dir, images, tmp_path):
    out = tmp_path / "s.jsonl"
    args = ["score", str(images / "gray.png"), "-m", "laion-aesthetic-v1", "--model", str(model_dir), "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args + ["--resume"])
    assert again.exit_code == 0 and said(again, "1 image(s) already scored")


# -- 9. folder scans ------------------------------------------------------------------------------------
def test_scan_reports_dangling_and_looping_links_and_unreadable_folders(model_dir, images, tmp_path, monkeypatch):
    (images / "dangling.png").symlink_to(images / "missing.png")
    (images / "loop.png").symlink_to(images / "loop.png")
    (images / "back").symlink_to(images)  # a link to the folder being searched: not searched twice
    locked = images / "locked"
    locked.mkdir()
    (locked / "hidden-by-permissions.png").write_bytes((images / "gray.png").read_bytes())
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found, skipped = find_images([images])
    assert {p.name for p in found} == {"landscape.png", "gray.png", "tiny.png", "portrait.png", "zbomb.png",
                                       "dangling.png", "loop.png", "locked"}
    assert skipped == [images / "back"]
    out = tmp_path / "s.jsonl"
    result = runner.invoke(app, ["score", str(images), "-m", "laion-aesthetic-v1", "--model", str(model_dir), "-o", str(out)])
    assert result.exit_code == 3, result.output
    errors = {Path(r["image"]).name: r["error"] for r in read_jsonl(out) if r["error"]}
    assert errors["dangling.png"].startswith("dangling symbolic link")
    assert errors["loop.png"].startswith("symbolic link loop")
    assert errors["locked"] == "folder cannot be read: Permission denied"
    assert errors["zbomb.png"].startswith("too many pixels")


def test_an_unreadable_named_file_is_an_error_row_not_an_abort(model_dir, images, tmp_path, monkeypatch):
    blocked = images / "blocked.png"
    blocked.write_bytes((images / "gray.png").read_bytes())
    denied = images / "denied.png"
    denied.write_bytes((images / "gray.png").read_bytes())
    real_stat, real_open = os.stat, open

    def stat(path, *args, **kwargs):  # a file inside a folder without search permission
        if os.fspath(path) == str(blocked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    def fake_open(path, *args, **kwargs):  # a file without read permission
        if isinstance(path, (str, os.PathLike)) and os.fspath(path) == str(denied):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr("builtins.open", fake_open)
    out = tmp_path / "s.jsonl"
    result = runner.invoke(app, ["score", str(blocked), str(denied), str(images / "gray.png"), "-m", "laion-aesthetic-v1",
                                 "--model", str(model_dir), "-o", str(out)])
    monkeypatch.undo()
    assert result.exit_code == 3, result.output
    rows = {Path(r["image"]).name: r for r in read_jsonl(out)}
    assert rows["blocked.png"]["error"] == "cannot read: Permission denied"
    assert "cannot open" in rows["denied.png"]["error"] and "Permission denied" in rows["denied.png"]["error"]
    assert rows["gray.png"]["error"] is None


# -- 10a. an image under several prompts ----------------------------------------------------------------
def test_prompts_file_scores_every_image_prompt_pair(model_dir, images, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("image,prompt\nimgs/gray.png,first\nimgs/gray.png,second\nimgs/tiny.png,third\n")
    out = tmp_path / "s.jsonl"
    args = ["score", "--prompts", str(prompts), "-m", "laion-aesthetic-v1", "--model", str(model_dir), "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    rows = read_jsonl(out)
    assert [(Path(r["image"]).name, r["prompt"]) for r in rows] == [("gray.png", "first"), ("gray.png", "second"), ("tiny.png", "third")]
    prompts.write_text(prompts.read_text() + "imgs/tiny.png,fourth\n")
    again = runner.invoke(app, args + ["--resume"])
    assert again.exit_code == 0 and said(again, "3 image(s) already scored")
    assert [r["prompt"] for r in read_jsonl(out)] == ["first", "second", "third", "fourth"]
    # with a folder: each image found once per prompt listed for it, an error row when none
    both = runner.invoke(app, ["score", str(images / "gray.png"), str(images / "landscape.png"), "--prompts", str(prompts),
                               "-m", "laion-aesthetic-v1", "--model", str(model_dir)])
    assert both.exit_code == 3
    assert said(both, "landscape.png: no prompt for this image")


def test_one_prompt_per_image_readers_refuse_an_image_under_two_prompts(tmp_path):
    from prefscore.errors import PromptError
    from prefscore.scoring import read_prompt_file

    prompts = tmp_path / "p.csv"
    prompts.write_text("image,prompt\na.png,first\na.png,second\n")
    with pytest.raises(PromptError, match="listed under two prompts"):
        read_prompt_file(prompts)


# -- 11. truncated prompts -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pickscore", "hpsv2", "clipscore", "imagereward"])
def test_long_prompts_warn_once_per_run_with_their_count(name, tmp_path):
    fixture = {"clipscore": "clip-iqa"}.get(name, name)
    metric = prefscore.load(name, model=str(shared_fixture(fixture) / "model"))
    image = np.full((32, 32, 3), 120, np.uint8)
    long_a, long_b = "a red fox " * 40, "a grey cat " * 40
    with pytest.warns(PromptTruncationWarning, match=rf"{name}: 2 prompt\(s\) longer than the model's \d+ tokens were truncated") as caught:
        metric.score([image] * 4, [long_a, long_b, long_a, "short"])
    assert len([w for w in caught if issubclass(w.category, PromptTruncationWarning)]) == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncationWarning)
        metric.score([image], "short")  # nothing cut, nothing said


def test_cli_says_how_many_prompts_were_truncated(tmp_path):
    root = shared_fixture("pickscore")
    image = next((root / "images").iterdir())
    result = runner.invoke(app, ["score", str(image), "-m", "pickscore", "--model", str(root / "model"),
                                 "--prompt", "a red fox " * 40])
    assert result.exit_code == 0, result.output
    assert said(result, "pickscore: 1 prompt(s) longer than the model's")


# -- 13a / 14a. output checks, overwrite, exit codes, score.sh, non-UTF-8 inputs ----------------------
def test_unwritable_output_is_refused_before_models_load(images, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["score", str(images), "-m", "laion-aesthetic-v1", "--model", str(tmp_path / "no-model"),
                                 "-o", str(blocker / "out.csv")])
    assert result.exit_code == 2 and said(result, "cannot write --output")
    result = runner.invoke(app, ["score", str(images), "-m", "laion-aesthetic-v1", "--model", str(tmp_path / "no-model"),
                                 "-o", str(tmp_path / "out.txt")])
    assert result.exit_code == 2 and said(result, "unknown output format")


def test_existing_output_needs_resume_or_overwrite(model_dir, images, tmp_path):
    out = tmp_path / "s.csv"
    args = ["score", str(images / "gray.png"), "-m", "laion-aesthetic-v1", "--model", str(model_dir), "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = out.read_text()
    refused = runner.invoke(app, [*args[:2], str(images / "tiny.png"), *args[2:]])
    assert refused.exit_code == 2 and said(refused, "already exists: pass --resume to continue it or --overwrite to replace it")
    assert out.read_text() == before
    replaced = runner.invoke(app, [*args[:1], str(images / "tiny.png"), *args[2:], "--overwrite"])
    assert replaced.exit_code == 0
    assert [Path(r["image"]).name for r in read_rows(out)] == ["tiny.png"]


def test_non_utf8_prompts_file_is_named(images, tmp_path):
    prompts = tmp_path / "latin1.csv"
    prompts.write_bytes("image,prompt\nimgs/gray.png,caf\xe9\n".encode("latin-1"))
    result = runner.invoke(app, ["score", "--prompts", str(prompts), "-m", "laion-aesthetic-v1"])
    assert result.exit_code == 2 and said(result, "latin1.csv: not UTF-8 text")


def test_score_sh_uses_the_callers_folder_and_exit_code(model_dir, images, tmp_path):
    """scripts/score.sh in a copy of the repository layout (setup stubbed, prefscore = this tree)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "score.sh").write_text((REPO / "scripts" / "score.sh").read_text())
    (repo / "scripts" / "setup.sh").write_text("#!/usr/bin/env bash\n")
    exe = repo / ".venv" / "bin" / "prefscore"
    exe.parent.mkdir(parents=True)
    exe.write_text(f'#!/usr/bin/env bash\nPYTHONPATH={REPO / "src"} exec {sys.executable} -c '
                   f'"import sys; from prefscore.cli import app; sys.argv[0] = \'prefscore\'; app()" "$@"\n')
    exe.chmod(0o755)
    cmd = ["bash", str(repo / "scripts" / "score.sh"), "imgs", "-m", "laion-aesthetic-v1", "--model", str(model_dir),
           "-o", "out.jsonl"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=images.parent, env=env, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr  # the bomb is an error row
    assert len(read_jsonl(images.parent / "out.jsonl")) == 5
    again = subprocess.run(cmd, cwd=images.parent, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr
