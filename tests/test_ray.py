"""The Ray Data engine on a local Ray instance (2 CPUs) with the tiny fixture models."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import read_jsonl, shared_fixture
from prefscore.cli import app
from prefscore.engine.local import EngineOptions
from prefscore.engine.ray import RayScoreConfig, ScoreActor, read_source, score_with_ray

try:
    import ray
except ImportError:  # a hard failure, not a skip: the dev extras (scripts/setup.sh) install ray[data]
    pytest.fail('the Ray engine tests need ray[data] (pip install "ray[data]" or pip install -e ".[dev]")', pytrace=False)
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the workers Ray starts
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture()
def laion():
    root = shared_fixture("laion-aesthetic")
    cases = {os.path.basename(c["image"]): c for c in read_jsonl(root / "cases.jsonl")}
    return root, cases


def test_read_parquet_bytes_paths_and_webdataset(tmp_path, laion):
    root, _ = laion
    blobs = {n: (root / "images" / n).read_bytes() for n in ("landscape.png", "large.jpg")}
    pq.write_table(pa.table({"path": list(blobs), "image": list(blobs.values()), "prompt": ["a fox", "a cat"]}),
                   tmp_path / "bytes.parquet")
    rows = read_source([str(tmp_path / "bytes.parquet")], RayScoreConfig(metrics=["x"])).take_all()
    assert sorted((r["image"], bytes(r["data"]), r["prompt"]) for r in rows) == sorted(
        [("landscape.png", blobs["landscape.png"], "a fox"), ("large.jpg", blobs["large.jpg"], "a cat")])

    pq.write_table(pa.table({"file": [str(root / "images" / n) for n in blobs]}), tmp_path / "paths.parquet")
    rows = read_source([str(tmp_path / "paths.parquet")], RayScoreConfig(metrics=["x"], image_column="file")).take_all()
    assert sorted(r["image"] for r in rows) == sorted(str(root / "images" / n) for n in blobs)
    assert all(len(r["data"]) == 0 for r in rows)  # local paths are opened by the actor

    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        for key, (name, blob) in enumerate(blobs.items()):
            for suffix, data in ((os.path.splitext(name)[1].lstrip("."), blob), ("txt", f"prompt {key}".encode())):
                info = tarfile.TarInfo(f"sample{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    rows = read_source([str(tmp_path / "shard-000.tar")], RayScoreConfig(metrics=["x"])).take_all()
    got = sorted((r["image"].rsplit("#", 1)[1], bytes(r["data"]), r["prompt"]) for r in rows)
    assert got == [("sample0", blobs["landscape.png"], "prompt 0"), ("sample1", blobs["large.jpg"], "prompt 1")]


def test_actor_scores_prompts_and_reports_missing_ones():
    root = shared_fixture("pickscore")
    case = read_jsonl(root / "cases.jsonl")[0]
    actor = ScoreActor({"metrics": ["pickscore"], "models": {"pickscore": str(root / "model")}, "options": {},
                        "prompt": None, "dtype": "float32", "num_gpus": 0, "engine": {"batch_size": 4, "workers": 1}})
    names = case["images"][:3]
    batch = {"image": np.asarray(names + ["blank"], dtype=object),
             "data": np.asarray([(root / n).read_bytes() for n in names] + [b""], dtype=object),
             "prompt": np.asarray([case["prompt"], None, case["prompt"], case["prompt"]], dtype=object)}
    out = actor(batch)
    assert out["pickscore"][0] == pytest.approx(case["scores"][0], abs=2e-4)
    assert out["pickscore"][2] == pytest.approx(case["scores"][2], abs=2e-4)
    assert np.isnan(out["pickscore"][1]) and out["error"][1] == "no prompt for this image"
    assert np.isnan(out["pickscore"][3]) and "file not found" in out["error"][3]  # no bytes: the name is a path
    assert out["error"][0] is None


def test_cli_ray_engine_folder_to_parquet_then_resume(tmp_path, laion):
    root, cases = laion
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("landscape.png", "gray.png", "large.jpg"):
        (folder / name).write_bytes((root / "images" / name).read_bytes())
    (folder / "corrupt.jpg").write_bytes((root / "images" / "large.jpg").read_bytes()[:2000])
    out = tmp_path / "scores"
    model = str(root / "model")
    args = ["score", str(folder), "-m", "laion-aesthetic,laion-aesthetic-v1", "--model", f"laion-aesthetic={model}",
            "--model", f"laion-aesthetic-v1={model}", "-o", str(out), "--engine", "ray", "--batch-size", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 scored, 1 failed" in result.output
    rows = {os.path.basename(r["image"]): r for r in pq.read_table(out).to_pylist()}
    assert set(rows) == {"landscape.png", "gray.png", "large.jpg", "corrupt.jpg"}
    for name in ("landscape.png", "gray.png", "large.jpg"):
        assert rows[name]["laion-aesthetic"] == pytest.approx(cases[name]["score_mlp"], rel=1e-5, abs=1e-4)
        assert rows[name]["laion-aesthetic-v1"] == pytest.approx(cases[name]["score_linear"], rel=1e-5, abs=1e-5)
        assert rows[name]["error"] is None
    assert "truncated" in rows["corrupt.jpg"]["error"]

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output  # never mixes two runs silently
    (folder / "tiny.png").write_bytes((root / "images" / "tiny.png").read_bytes())
    config = RayScoreConfig(metrics=["laion-aesthetic"], models={"laion-aesthetic": model}, batch_size=2,
                            engine=EngineOptions(workers=1))
    summary = score_with_ray([str(folder)], out, config, resume=True)
    assert summary["rows"] == 5 and summary["failed"] == 1
    added = [r for r in pq.read_table(out).to_pylist() if r["image"].endswith("tiny.png")]
    assert len(added) == 1 and added[0]["laion-aesthetic"] == pytest.approx(cases["tiny.png"]["score_mlp"], rel=1e-5, abs=1e-4)


def test_cli_ray_engine_reads_a_prompts_file(tmp_path):
    """--prompts FILE with --engine ray: per-image prompts (two different ones), an image the file
    does not list becomes an error row, and without PATHS the file's images are the source."""
    root = shared_fixture("pickscore")
    cases = read_jsonl(root / "cases.jsonl")[:2]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("landscape.png", "large.jpg", "gray.png"):
        (folder / name).write_bytes((root / "images" / name).read_bytes())
    expect = {"landscape.png": (cases[0]["prompt"], cases[0]["scores"][cases[0]["images"].index("images/landscape.png")]),
              "large.jpg": (cases[1]["prompt"], cases[1]["scores"][cases[1]["images"].index("images/large.jpg")])}
    import pandas as pd

    pd.DataFrame({"image": [f"imgs/{n}" for n in expect], "prompt": [p for p, _ in expect.values()]}).to_csv(tmp_path / "prompts.csv", index=False)
    base = ["score", "-m", "pickscore", "--model", str(root / "model"), "--prompts", str(tmp_path / "prompts.csv"),
            "--engine", "ray", "--batch-size", "2", "--workers", "1"]
    result = runner.invoke(app, base[:1] + [str(folder)] + base[1:] + ["-o", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    rows = {os.path.basename(r["image"]): r for r in pq.read_table(tmp_path / "a").to_pylist()}
    assert set(rows) == {"landscape.png", "large.jpg", "gray.png"}
    for name, (prompt, score) in expect.items():
        assert rows[name]["prompt"] == prompt and rows[name]["error"] is None
        assert rows[name]["pickscore"] == pytest.approx(score, abs=2e-4)
    assert rows["gray.png"]["error"] == "no prompt for this image" and np.isnan(rows["gray.png"]["pickscore"])

    listed = runner.invoke(app, base + ["-o", str(tmp_path / "b")])  # no PATHS: score what the file lists
    assert listed.exit_code == 0, listed.output
    rows = {os.path.basename(r["image"]): r for r in pq.read_table(tmp_path / "b").to_pylist()}
    assert set(rows) == set(expect) and all(rows[n]["pickscore"] == pytest.approx(s, abs=2e-4) for n, (_, s) in expect.items())
