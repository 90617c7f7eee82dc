"""The local scoring engine: shared decode/encode (never at the cost of parity), feature cache,
bounded prefetch, error rows, streaming output and interruption (a real SIGINT in a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import prefscore
from conftest import assert_close_paths, read_jsonl, shared_fixture
from prefscore import preprocess
from prefscore.backbones.clip import ClipTower
from prefscore.base import Metric
from prefscore.cli import app
from prefscore.engine import Engine, EngineOptions
from prefscore.engine.shared import SharedTower, same_tower, shared_towers
from prefscore.registry import MetricSpec
from prefscore.scoring import ScoreJob

runner = CliRunner()


@pytest.fixture(scope="module")
def laion():
    """laion-aesthetic (v2 MLP) and v1 (linear) on the same tiny ViT checkpoint, and the fixture cases."""
    root = shared_fixture("laion-aesthetic")
    os.environ["HF_HUB_OFFLINE"] = "1"
    v2 = prefscore.load("laion-aesthetic", model=root / "model")
    v1 = prefscore.load("laion-aesthetic-v1", model=root / "model")
    cases = read_jsonl(root / "cases.jsonl")
    items = [str(root / c["image"]) for c in cases]
    return v2, v1, cases, items


@pytest.fixture()
def tower_calls(monkeypatch):
    """Counts forward passes of every CLIP image tower."""
    calls = []
    original = ClipTower.image_features

    def counting(self, pixels):
        calls.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(ClipTower, "image_features", counting)
    return calls


def test_two_heads_on_one_backbone_encode_once_and_match_the_reference(laion, tower_calls):
    v2, v1, cases, items = laion
    assert v2.clip is not v1.clip and same_tower(v2.clip, v1.clip)  # two loads, identical weights
    shared, errors = Engine({"v2": v2, "v1": v1}, EngineOptions(batch_size=3, workers=2)).score(items)
    assert errors == []
    assert tower_calls == [3, 3, 2]  # one encode per batch for both metrics
    np.testing.assert_allclose(shared["v2"][:, 0], [c["score_mlp"] for c in cases], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(shared["v1"][:, 0], [c["score_linear"] for c in cases], rtol=1e-5, atol=1e-5)
    tower_calls.clear()
    separate, _ = Engine({"v2": v2, "v1": v1}, EngineOptions(batch_size=3, share=False)).score(items)
    assert tower_calls == [3, 3, 3, 3, 2, 2]  # each metric encodes each batch
    for name in ("v2", "v1"):
        np.testing.assert_array_equal(shared[name], separate[name])  # sharing changes nothing
    assert not isinstance(v2.clip, SharedTower) and not isinstance(v1.clip, SharedTower)  # towers restored


def test_same_weights_but_other_preprocessing_is_not_shared(laion, tower_calls, monkeypatch):
    v2, _, _, items = laion
    other = prefscore.load("laion-aesthetic", model=shared_fixture("laion-aesthetic") / "model")
    cfg = preprocess.HFProcessorConfig(shortest_edge=other.image_size, crop_height=other.image_size, crop_width=other.image_size)
    monkeypatch.setattr(other, "preprocess", lambda image, name: preprocess.hf_clip(image, cfg, name=name))
    monkeypatch.setattr(other, "preprocess_key", lambda: ("hf_clip", cfg))
    alone = other.score(items)
    engine = Engine({"openai": v2, "hf": other}, EngineOptions(batch_size=4))
    assert len(engine.units) == 2
    tower_calls.clear()
    together, _ = engine.score(items)
    assert len(tower_calls) == 4  # two batches x two preprocessings
    assert_close_paths(together["hf"][:, 0], alone)  # batches of 4 in the engine vs the default batch size
    assert_close_paths(together["openai"][:, 0], v2.score(items))
    assert np.abs(together["hf"][:, 0] - together["openai"][:, 0]).max() > 1e-4  # the pipelines really differ


def test_towers_restored_when_the_block_raises(laion):
    v2, v1, _, _ = laion
    original = v2.clip
    with pytest.raises(RuntimeError):
        with shared_towers([v2, v1]) as proxies:
            assert v2.clip is proxies[id(v2)] is proxies[id(v1)]
            raise RuntimeError("boom")
    assert v2.clip is original


def test_bad_items_become_errors_at_their_index(laion):
    v2, v1, cases, items = laion
    good = Image.open(items[0])
    mixed = [items[1], b"not an image", "/no/such/file.png", good, np.asarray(good.convert("RGB")), items[2]]
    scores, errors = Engine({"v2": v2, "v1": v1}, EngineOptions(batch_size=2)).score(mixed)
    assert [(i, m) for i, m, _ in errors] == [(1, None), (2, None)]
    assert "not an image" in errors[0][2] and "not found" in errors[1][2]
    expected = [cases[1]["score_mlp"], np.nan, np.nan, cases[0]["score_mlp"], None, cases[2]["score_mlp"]]
    for got, want in zip(scores["v2"][:, 0], expected):
        if want is None:
            assert np.isfinite(got)
        elif np.isnan(want):
            assert np.isnan(got)
        else:
            assert got == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_feature_cache_skips_decode_and_encode_on_rerun(laion, tower_calls, tmp_path, monkeypatch):
    v2, v1, _, items = laion
    options = EngineOptions(batch_size=4, cache=tmp_path / "cache")
    first, _ = Engine({"v2": v2, "v1": v1}, options).score(items)
    assert tower_calls == [4, 4]
    stored = list((tmp_path / "cache").rglob("*.npy"))
    assert len(stored) == len(items)  # one entry per image, shared by both heads
    decoded = []
    import prefscore.engine.local as local

    original = local.load_image
    monkeypatch.setattr(local, "load_image", lambda item, name: decoded.append(name) or original(item, name))
    tower_calls.clear()
    again, errors = Engine({"v2": v2, "v1": v1}, options).score(items + [b"junk"])
    assert errors and errors[0][0] == len(items)
    assert tower_calls == [] and decoded == ["<bytes #8>"]  # only the uncached item was decoded
    for name in ("v2", "v1"):
        np.testing.assert_array_equal(again[name][: len(items)], first[name])
    # another numeric mode is another cache key: nothing is reused across fp32 / bf16
    tower_calls.clear()
    Engine({"v2": v2}, EngineOptions(batch_size=8, cache=tmp_path / "cache", autocast="bf16")).score(items)
    assert tower_calls == [8]


def test_autocast_bf16_is_opt_in_and_close(laion):
    v2, _, cases, items = laion
    exact = Engine({"v2": v2}, EngineOptions(batch_size=8)).score(items)[0]["v2"]
    fast = Engine({"v2": v2}, EngineOptions(batch_size=8, autocast="bf16")).score(items)[0]["v2"]
    assert not np.array_equal(exact, fast)
    np.testing.assert_allclose(fast[:, 0], exact[:, 0], rtol=0.05, atol=0.3)
    with pytest.raises(ValueError, match="autocast"):
        EngineOptions(autocast="int8")


class _Counting(Metric):
    """A weight-free metric (mean pixel value) that records how far decoding runs ahead of the forward."""

    def __init__(self):
        super().__init__()
        self.spec = MetricSpec(name="mean", family="test", summary="mean pixel", inputs="image", output_range=(0.0, 255.0),
                               typical="", higher_is_better=True, default_model="", weights_license="", strength="",
                               caveat="", entry="")
        self.lock = threading.Lock()
        self.prepared: set[float] = set()  # distinct images: on a busy machine the caller may decode an image a
        self.forwarded = self.max_ahead = 0  # starved worker still holds, and that worker's late copy is dropped

    def preprocess(self, image, name):
        time.sleep(0.002)
        value = float(np.asarray(image, dtype=np.float64).mean())
        with self.lock:
            self.prepared.add(value)
        return torch.tensor([value])

    def forward(self, pixels, prompts):
        with self.lock:
            self.max_ahead = max(self.max_ahead, len(self.prepared) - self.forwarded)
        self.forwarded += len(pixels)
        return pixels[:, 0]


@pytest.mark.parametrize("workers,prefetch", [(0, 2), (2, 0), (2, 1), (4, 3)])
def test_decoding_ahead_is_bounded(workers, prefetch):
    metric = _Counting()
    images = [np.full((8, 8, 3), i % 251, dtype=np.uint8) for i in range(60)]
    scores, errors = Engine({"mean": metric}, EngineOptions(batch_size=4, workers=workers, prefetch=prefetch)).score(images)
    assert errors == [] and scores["mean"][:, 0].tolist() == [float(i % 251) for i in range(60)]
    bound = 4 if workers == 0 else (prefetch + 1) * 4
    assert metric.max_ahead <= bound


def test_metric_score_uses_the_engine_with_errors(laion):
    v2, _, cases, items = laion
    with pytest.raises(prefscore.ScoringError) as info:
        v2.score([items[0], b"", items[1]], batch_size=2)
    assert [i for i, _, _ in info.value.errors] == [1]
    assert info.value.scores[2] == pytest.approx(cases[1]["score_mlp"], rel=1e-5, abs=1e-4)


def _folder(tmp_path: Path, n: int) -> Path:
    src = shared_fixture("laion-aesthetic") / "images"
    d = tmp_path / "many"
    d.mkdir()
    rng = np.random.default_rng(0)
    blobs = []
    for k in range(4):
        path = tmp_path / f"seed{k}.jpg"
        Image.fromarray(rng.integers(0, 255, (640, 800, 3), dtype=np.uint8)).save(path, quality=90)
        blobs.append(path.read_bytes())
    blobs.append((src / "landscape.png").read_bytes())
    for i in range(n):
        (d / f"img{i:04d}{'.png' if i % 5 == 4 else '.jpg'}").write_bytes(blobs[i % 5])
    return d


def test_parquet_streams_batches_and_keeps_them_on_ctrl_c(laion, tmp_path):
    v2, v1, _, _ = laion
    folder = _folder(tmp_path, 40)
    images = sorted(folder.iterdir())
    out = tmp_path / "s.parquet"
    job = ScoreJob({"v2": v2, "v1": v1}, batch_size=4, chunk_size=8)
    seen = []

    def interrupt_after_three_batches(k):
        seen.append(k)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job.run(images, output=out, progress=interrupt_after_three_batches)
    kept = pq.read_table(out).to_pylist()
    assert [r["image"] for r in kept] == [str(p) for p in images[:12]]  # three whole batches, nothing more
    rows = ScoreJob({"v2": v2, "v1": v1}, batch_size=4, chunk_size=8).run(images, output=out, resume=True)
    assert [r["image"] for r in rows] == [str(p) for p in images]
    full = ScoreJob({"v2": v2, "v1": v1}, batch_size=4).run(images)
    assert_close_paths([r["v2"] for r in pq.read_table(out).to_pylist()], [r["v2"] for r in full])  # two runs


# The subprocess's decoder blocks on img0012 until it is interrupted, so the signal provably arrives while work is
# left (never a race with the clock): the rows of the batches before it are written, the job cannot finish.
_BLOCK_AT_IMG0012 = """
import pathlib, signal, sys, threading
import prefscore.engine.local as local
from prefscore.cli import app

decode = local.load_image
interrupted = threading.Event()


def on_sigint(signum, frame):  # Python's own behaviour, and it releases the decoders blocked below
    interrupted.set()
    raise KeyboardInterrupt


def load_image(item, *args, **kwargs):
    if "img0012" in str(item):
        pathlib.Path(sys.argv[1]).touch()
        interrupted.wait()  # until SIGINT
        raise RuntimeError("interrupted")
    return decode(item, *args, **kwargs)


signal.signal(signal.SIGINT, on_sigint)
local.load_image = load_image
app(sys.argv[2:], prog_name="prefscore")
"""


def test_sigint_in_a_subprocess_loses_at_most_the_batch_in_flight(tmp_path):
    model = shared_fixture("laion-aesthetic") / "model"
    folder = _folder(tmp_path, 160)
    out = tmp_path / "s.jsonl"
    blocked = tmp_path / "blocked"
    args = ["score", str(folder), "-m", "laion-aesthetic,laion-aesthetic-v1", "--model", f"laion-aesthetic={model}",
            "--model", f"laion-aesthetic-v1={model}", "-o", str(out), "--batch-size", "4", "--workers", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-c", _BLOCK_AT_IMG0012, str(blocked), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # wait for a condition (generous bound for a loaded machine): img0012 reached and two batches written
        deadline = time.monotonic() + 600
        while not (blocked.exists() and out.exists() and len(out.read_text().splitlines()) >= 8):
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the scoring subprocess never reached img0012"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode != 0, err.decode()[-2000:]
    lines = out.read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole
    assert len(rows) in (8, 12)  # the batches before img0012's, nothing of the batch in flight
    assert all(r["error"] is None and r["laion-aesthetic"] is not None for r in rows)
    result = runner.invoke(app, args + ["--resume"])
    assert result.exit_code == 0, result.output
    final = read_jsonl(out)
    assert len(final) == 160 and len({r["image"] for r in final}) == 160
    assert final[: len(rows)] == rows


def test_cli_engine_options(laion, tmp_path):
    model = shared_fixture("laion-aesthetic") / "model"
    folder = _folder(tmp_path, 10)
    out = tmp_path / "s.csv"
    args = ["score", str(folder), "-m", "laion-aesthetic", "--model", str(model), "-o", str(out), "--workers", "2",
            "--prefetch", "1", "--cache", str(tmp_path / "cache")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "10 scored, 0 failed" in result.output
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 5  # five distinct contents among ten files
    bad = runner.invoke(app, args[:-2] + ["--autocast", "int4", "-o", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "autocast" in bad.output


def test_decode_workers_run_at_idle_priority_and_the_caller_steals_unstarted_images(laion, monkeypatch):
    """CPU models: decode threads run under SCHED_IDLE (never preempting the forward's threads);
    images of the due batch that no worker has started are decoded by the calling thread.
    The scores are those of a plain sequential run."""
    v2, _, cases, items = laion
    if not hasattr(os, "SCHED_IDLE"):
        pytest.fail("this test checks Linux thread scheduling (os.SCHED_IDLE)", pytrace=False)
    items = items[:4]
    main = threading.get_ident()
    seen: dict[int, tuple[bool, int]] = {}
    stolen = threading.Event()
    original = v2.preprocess

    def recording(image, name):
        on_main = threading.get_ident() == main
        seen[items.index(name)] = (on_main, os.sched_getscheduler(0))
        if not on_main:  # hold the worker on its first image until the caller has taken the others
            stolen.wait(10)
        elif sum(m for m, _ in seen.values()) == 3:
            stolen.set()
        return original(image, name)

    monkeypatch.setattr(v2, "preprocess", recording)
    scores, errors = Engine({"a": v2}, EngineOptions(batch_size=4, workers=1)).score(items)
    assert errors == [] and sorted(seen) == [0, 1, 2, 3]
    assert sum(on_main for on_main, _ in seen.values()) >= 3  # at most the image the worker had begun
    assert all(policy == os.SCHED_IDLE for on_main, policy in seen.values() if not on_main)
    assert all(policy != os.SCHED_IDLE for on_main, policy in seen.values() if on_main)
    expected = [c["score_mlp"] for c in cases[:4]]
    np.testing.assert_allclose(scores["a"][:, 0], expected, rtol=1e-5, atol=1e-4)

    seen.clear()
    stolen.set()
    Engine({"a": v2}, EngineOptions(batch_size=1, workers=1, prefetch=3, idle_priority=False)).score(items)
    assert all(policy != os.SCHED_IDLE for _, policy in seen.values())  # opted out: normal priority


def test_an_image_held_by_a_starved_decode_worker_is_decoded_by_the_caller(laion, monkeypatch):
    """An idle-priority worker on a saturated machine may not run for seconds: the caller does not
    wait for it beyond a few decode times, decodes that image itself, and drops the worker's copy."""
    v2, _, cases, items = laion
    items = items[:3]
    main = threading.get_ident()
    by_main: list[int] = []
    release = threading.Event()
    original = v2.preprocess

    def starving(image, name):
        if threading.get_ident() == main:
            by_main.append(items.index(name))
        else:
            release.wait(10)  # a starved worker: it finishes only after the job
        return original(image, name)

    monkeypatch.setattr(v2, "preprocess", starving)
    t = time.perf_counter()
    try:
        scores, errors = Engine({"a": v2}, EngineOptions(batch_size=3, workers=1, idle_priority=True)).score(items)
    finally:
        release.set()
    assert time.perf_counter() - t < 5
    assert errors == [] and sorted(by_main) == [0, 1, 2]
    np.testing.assert_allclose(scores["a"][:, 0], [c["score_mlp"] for c in cases[:3]], rtol=1e-5, atol=1e-4)
