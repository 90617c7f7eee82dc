"""End-to-end fast path on a task with a known answer: clean images versus degraded copies.

The data (prefscore.training.synthetic): two crops of one procedural scene per pair, one of them
blurred, noised, JPEG-compressed or contrast-reduced at a random level; 15% of pairs are ties (both
crops degraded alike) and 10% of strict labels are flipped. A model that always prefers the clean
crop scores 0.90 on the noisy held-out labels and chance is 0.50; with ~75 strict validation pairs
the standard error is ~0.035, so the bar of 0.75 is >7 SE above chance and >4 SE below the ceiling.
Against the noise-free labels the bar is 0.85.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

import prefscore
from prefscore.data import load_judgements
from prefscore.training import HeadConfig, TrainConfig, train
from prefscore.training.cache import EmbeddingCache, file_sha256
from prefscore.training.features import StatsExtractor
from prefscore.training.synthetic import make_pairs, make_ratings


@pytest.fixture(scope="module")
def pairs_set(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), n_scenes=50, pairs_per_scene=6, tie_fraction=0.15,
                      label_noise=0.1, seed=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(pairs_set, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "stats-linear"
    config = TrainConfig(objective="pairwise", backbone="stats", head=HeadConfig("linear"), val_fraction=0.3,
                         lr=1e-2, batch_size=64, seed=0, cache_dir=str(cache_dir))
    return train(pairs_set.path, out, config)


def test_learns_the_preference_far_above_chance(trained, pairs_set):
    m = trained.metrics
    assert m["strict_pairs"] >= 60
    assert m["pairwise_accuracy"] >= 0.75, m
    lo, hi = m["pairwise_accuracy_ci"]
    assert 0.6 < lo <= m["pairwise_accuracy"] <= hi
    # against the noise-free labels, scored by the reloaded model
    model = prefscore.load(trained.out)
    val_prompts = {p for _, p, _ in trained.val_scores}
    data = load_judgements(pairs_set.path)  # records in the order written, aligned with the true labels
    val = [(p, t) for p, t in zip(data.records, pairs_set.true_labels) if p.prompt in val_prompts]
    strict = [(p, t) for p, t in val if t != "tie"]
    sa = model.score([p.image_a for p, _ in strict])
    sb = model.score([p.image_b for p, _ in strict])
    clean_acc = np.mean([(a > b) == (t == "a") for a, b, (_, t) in zip(sa, sb, strict)])
    assert clean_acc >= 0.85, clean_acc


def test_ties_are_predicted(trained):
    m = trained.metrics
    assert m["val_ties"] >= 5
    assert trained.meta["tie_threshold"] > 0
    assert m["predicted_ties"] >= 3
    assert m["tie_aware_accuracy"] >= m["tie_chance"] + 0.2, m


def test_tied_pairs_get_closer_probabilities(trained, pairs_set):
    model = prefscore.load(trained.out)
    data = load_judgements(pairs_set.path)
    val_prompts = {p for _, p, _ in trained.val_scores}
    val = [p for p in data.records if p.prompt in val_prompts]
    gap = {}
    for kind in ("tie", "strict"):
        sel = [p for p in val if (p.label == "tie") == (kind == "tie")]
        sa, sb = model.score([p.image_a for p in sel]), model.score([p.image_b for p in sel])
        gap[kind] = np.median(np.abs(2 / (1 + np.exp(-(sa - sb))) - 1))
    assert gap["tie"] < 0.5 * gap["strict"], gap


def test_saved_model_gives_the_same_scores_and_card(trained):
    paths = [x for x, _, _ in trained.val_scores]
    expected = np.array([s for _, _, s in trained.val_scores])
    for model in (prefscore.load(str(trained.out)), prefscore.load("custom", model=trained.out)):
        assert not model.needs_prompt
        np.testing.assert_allclose(model.score(paths), expected, rtol=0, atol=1e-5)
    out = Path(trained.out)
    card = (out / "README.md").read_text()
    assert f"{trained.metrics['pairwise_accuracy']:.3f}" in card and "bootstrap CI" in card
    with Image.open(out / "training_curve.png") as im:
        assert im.format == "PNG" and im.width > 100
    assert (out / "prefscore.json").read_text().count('"metric": "custom"') == 1
    # the training images themselves score through the same API with PIL input too
    img = Image.open(paths[0])
    assert np.isclose(prefscore.load(out).score(img), expected[0], atol=1e-5)


def test_embedding_cache_is_reused(pairs_set, cache_dir, trained):
    images = load_judgements(pairs_set.path).images()
    stored = list(Path(cache_dir).rglob("*.npy"))
    assert len(stored) == len({file_sha256(p) for p in images})  # one entry per distinct image content
    cache = EmbeddingCache(cache_dir)
    feats = cache.image_embeddings(StatsExtractor(), images[:20])
    assert cache.hits == 20 and cache.misses == 0
    assert feats.shape == (20, StatsExtractor().image_dim) and np.isfinite(feats).all()


def test_rating_regression_recovers_the_known_order(tmp_path):
    data = make_ratings(tmp_path / "ratings", n_scenes=40, images_per_scene=5, seed=1)
    config = TrainConfig(objective="rating", backbone="stats", head=HeadConfig("linear"), val_fraction=0.3,
                         lr=1e-2, batch_size=32, seed=0, cache_dir=str(tmp_path / "cache"))
    result = train(data.path, tmp_path / "model", config)
    # target 10 - 6 * severity over four degradation kinds and 12 unseen scenes
    assert result.metrics["n"] == 60
    assert result.metrics["srcc"] >= 0.6, result.metrics
    assert result.metrics["srcc_ci"][0] > 0.3
    paths = [x for x, _, _ in result.val_scores]
    np.testing.assert_allclose(prefscore.load(tmp_path / "model").score(paths),
                               [s for *_, s in result.val_scores], atol=1e-5)


def test_objective_must_fit_the_data(pairs_set, tmp_path):
    with pytest.raises(ValueError, match="objective 'rating' needs ratings"):
        train(pairs_set.path, tmp_path / "x", TrainConfig(objective="rating"))
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="listwise")


def test_cli_train(pairs_set, cache_dir, tmp_path):
    app = typer.Typer()
    from prefscore.training.cli import register

    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps Typer in multi-command mode, as in the real CLI
        pass

    runner = CliRunner()
    out = tmp_path / "cli-model"
    result = runner.invoke(app, ["train", str(pairs_set.path), "--objective", "choice", "--head", "mlp", "--hidden", "32",
                                 "--out", str(out), "--val-fraction", "0.3", "--cache-dir", str(cache_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "validation pairwise accuracy" in result.output and "tie-aware accuracy" in result.output
    assert prefscore.load(out).meta["objective"] == "choice"
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,image_a,image_b,label\nx,a.png,b.png,maybe\n")
    result = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "no")])
    assert result.exit_code == 2
    assert "bad.csv, line 2" in result.output and "label 'maybe'" in result.output
