"""Evaluation statistics, agreement protocols, composites and warnings, on synthetic score columns
(no model weights needed)."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from prefscore.evaluation import (
    BootstrapPlan,
    Calibration,
    CalibrationError,
    EvalConfig,
    ScoreLookupError,
    ScoreTable,
    alignment_vs_aesthetic,
    calibrate,
    choose_tie_threshold,
    disagreements,
    evaluate,
    fit_logistic,
    fit_weights,
    inversion_scores,
    krcc,
    paired_test,
    pinned_scores,
    plcc,
    reward_hacking,
    srcc,
    tie_credits,
)
from prefscore.evaluation.stats import logistic4, percentile_interval

# -- statistics against scipy ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    if seed % 2:  # ties in both
        x, y = np.round(x, 1), np.round(y)
    assert srcc(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    assert krcc(x, y) == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-12)
    assert plcc(x, y) == pytest.approx(sps.pearsonr(x, y).statistic, abs=1e-12)


def test_correlations_of_constant_input_are_nan():
    assert math.isnan(srcc([1, 1, 1], [1, 2, 3]))
    assert math.isnan(plcc([1, 2, 3], [5, 5, 5]))
    assert math.isnan(krcc([1], [2]))


def test_logistic_fit_recovers_known_curve():
    rng = np.random.default_rng(0)
    true = (4.5, 1.2, 0.3, 0.15)  # MOS from 1.2 to 4.5, centred at 0.3
    x = rng.uniform(-0.4, 1.0, 800)
    y = logistic4(x, *true) + rng.normal(0, 0.05, x.size)
    fit = fit_logistic(x, y, "4pl")
    assert fit.ok
    assert np.allclose(fit.params, true, rtol=0.05, atol=0.01)
    mapped = fit.predict(x)
    assert plcc(mapped, y) > plcc(x, y) + 0.02  # the mapping linearises
    assert np.sqrt(np.mean((mapped - y) ** 2)) == pytest.approx(0.05, rel=0.15)  # residual = the noise
    fit5 = fit_logistic(x, y, "5pl")
    assert fit5.ok and np.sqrt(np.mean((fit5.predict(x) - y) ** 2)) < 0.06


def test_logistic_fit_failure_is_reported_not_raised():
    fit = fit_logistic([1.0, 1.0, 1.0], [1, 2, 3])
    assert not fit.ok and np.isnan(fit.predict([1.0])).all()


# -- bootstrap -------------------------------------------------------------------------------------


def _clustered_draw(rng, G=60):
    sizes = rng.integers(1, 7, G)
    p = rng.beta(3.5, 1.5, G)  # per-prompt accuracy, mean 0.7: rows of a prompt are correlated
    y = np.concatenate([rng.random(n) < pg for n, pg in zip(sizes, p)]).astype(float)
    return y, np.repeat(np.arange(G), sizes)


def test_cluster_bootstrap_coverage_by_simulation():
    """A 95% interval resampling prompts covers the true accuracy in about 95% of synthetic data sets;
    resampling rows instead ignores the within-prompt correlation and covers visibly less often."""
    rng = np.random.default_rng(0)
    cover_units, cover_rows, n_sim = 0, 0, 300
    for s in range(n_sim):
        y, units = _clustered_draw(rng)
        for mode in ("units", "rows"):
            plan = BootstrapPlan(units if mode == "units" else np.arange(y.size), n_boot=400, seed=s)
            iv = percentile_interval(y.mean(), plan.ratio_of_sums(y[:, None])[:, 0])
            if mode == "units":
                cover_units += iv.covers(0.7)
            else:
                cover_rows += iv.covers(0.7)
    assert 0.90 <= cover_units / n_sim <= 0.985
    assert cover_rows / n_sim < cover_units / n_sim - 0.02


def test_bootstrap_coverage_of_spearman():
    rng = np.random.default_rng(5)
    rho = 0.6
    true = 6 / math.pi * math.asin(rho / 2)  # Spearman's rho of a bivariate normal
    cover, n_sim = 0, 100
    for s in range(n_sim):
        x = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], 80)
        plan = BootstrapPlan(np.arange(80), n_boot=150, seed=s)
        reps = plan.apply(lambda r: srcc(x[r, 0], x[r, 1]))[:, 0]
        cover += percentile_interval(srcc(x[:, 0], x[:, 1]), reps).covers(true)
    assert 0.88 <= cover / n_sim <= 1.0


def test_ratio_of_sums_equals_explicit_resampling():
    rng = np.random.default_rng(1)
    y, units = _clustered_draw(rng, G=15)
    w = (rng.random(y.size) > 0.2).astype(float)
    plan = BootstrapPlan(units.astype(str), n_boot=50, seed=3)
    fast = plan.ratio_of_sums(y[:, None], w[:, None])[:, 0]
    slow = plan.apply(lambda r: np.sum(y[r] * w[r]) / np.sum(w[r]))[:, 0]
    assert np.allclose(fast, slow)
    # each replicate resamples whole units: rows of a unit always come together
    rows = plan.rows(next(plan.draws())[0])
    for u in np.unique(units[rows]):
        assert np.sum(units[rows] == u) % np.sum(units == u) == 0


def test_paired_test():
    rng = np.random.default_rng(2)
    a = rng.normal(0.8, 0.02, 1000)
    same = paired_test(0.8, 0.8, a, a)
    assert same.difference.estimate == 0 and same.p_value == 1.0 and not same.significant
    diff = paired_test(0.8, 0.7, a, a - 0.1 + rng.normal(0, 0.01, 1000))
    assert diff.significant and diff.p_value < 0.01
    assert diff.difference.low == pytest.approx(0.1, abs=0.03)


# -- the pairwise protocols ------------------------------------------------------------------------

DELTA = np.array([2.0, 0.3, -1.0, 0.1, -0.05, 1.5])
HUMAN = np.array([1, 0, 1, -1, 0, -1])  # a, tie, a, b, tie, b


def test_tie_credits_hand_worked():
    # threshold 0.5 on |delta|: predictions a, tie, b, tie, tie, a
    # credits: right, right (tie=tie), wrong, half (pred tie, label b), right, wrong = 3.5 / 6
    c = tie_credits(DELTA, HUMAN, 0.5, "difference")
    assert c.tolist() == [1.0, 1.0, 0.0, 0.5, 1.0, 0.0]
    # Pick-a-Pic: |p_a - p_b| = |tanh(delta / 2)| = .762, .149, .462, .050, .025, .635
    # threshold 0.5 -> predictions a, tie, tie, tie, tie, a -> 1, 1, .5, .5, 1, 0 = 4 / 6
    c = tie_credits(DELTA, HUMAN, 0.5, "pickapic", temperature=1.0)
    assert c.tolist() == [1.0, 1.0, 0.5, 0.5, 1.0, 0.0]
    # temperature 10: every |p_a - p_b| < 0.1, so threshold 0.1 predicts all ties: 1/2 credit on the 4 non-ties
    assert tie_credits(DELTA, HUMAN, 0.1, "pickapic", temperature=10.0).mean() == pytest.approx(4 / 6)
    # threshold 0 predicts no ties except exact equality: ties get half credit
    assert tie_credits(DELTA, HUMAN, 0.0).tolist() == [1.0, 0.5, 0.0, 0.0, 0.5, 0.0]


def test_choose_tie_threshold_pickapic_grid():
    # |tanh(d/2)| = .762, .149, .462, .050, .025, .635. Total credit by threshold:
    # 0: 2.0 | 0.1: 3.0 (.050, .025 tie) | 0.2-0.4: 3.5 (+ .149) | 0.5-0.6: 4.0 (+ .462) | 0.7: 4.5 (+ .635)
    # | 0.8-1.0: 4.0 (.762 becomes a tie against an "a")
    t, acc = choose_tie_threshold(DELTA, HUMAN, "pickapic")
    assert t == 0.7 and acc == pytest.approx(4.5 / 6)
    for g, total in [(0.0, 2.0), (0.1, 3.0), (0.3, 3.5), (0.5, 4.0), (0.9, 4.0)]:
        assert tie_credits(DELTA, HUMAN, g, "pickapic").sum() == pytest.approx(total)


def test_inversion_score_hand_worked():
    # human ranks 1,2,3,4; predicted order by score: item1, item0, item3, item2 -> 2 discordant of 6
    assert inversion_scores([0.9, 1.0, 0.1, 0.2], [1, 2, 3, 4]) == pytest.approx(1 - 2 / 6)
    # human tie between items 0 and 1 is never discordant
    assert inversion_scores([0.9, 1.0, 0.1, 0.2], [1, 1, 3, 4]) == pytest.approx(1 - 1 / 6)
    # equal scores keep list order (stable sort): item 0 above item 1
    assert inversion_scores([0.5, 0.5], [2, 1]) == 0.0
    assert inversion_scores([0.5, 0.5], [1, 2]) == 1.0


def _write(tmp: Path, name: str, rows: list[dict]) -> Path:
    path = tmp / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _pairs_dataset(tmp: Path, n_prompts: int = 40, seed: int = 0):
    """Pairs with ties over 4 images per prompt, and a score file with a good, a noisy and a random metric."""
    rng = np.random.default_rng(seed)
    pairs, scores = [], []
    for p in range(n_prompts):
        q = rng.normal(size=4)
        names = [f"p{p}_{k}.png" for k in range(4)]
        for k in range(4):
            scores.append({"image": str(tmp / names[k]), "prompt": f"prompt {p}", "good": q[k] + rng.normal(0, 0.3),
                           "noisy": q[k] + rng.normal(0, 1.5), "random": rng.normal()})
        for i, j in combinations(range(4), 2):
            d = q[i] - q[j]
            label = "tie" if abs(d) < 0.25 else ("a" if d + rng.normal(0, 0.3) > 0 else "b")
            pairs.append({"prompt": f"prompt {p}", "image_a": names[i], "image_b": names[j], "label": label,
                          "generator": "g1" if p % 2 else "g2"})
    return _write(tmp, "pairs.csv", pairs), _write(tmp, "scores.csv", scores), pd.DataFrame(pairs), pd.DataFrame(scores)


def test_pairs_evaluation_against_direct_computation(tmp_path):
    pairs_csv, scores_csv, pairs, scores = _pairs_dataset(tmp_path)
    res = evaluate(pairs_csv, scores=scores_csv, config=EvalConfig(n_boot=300, group_by=("generator",)))
    assert res.kind == "pairs" and res.metrics == ["good", "noisy", "random"]
    lookup = {Path(r.image).name: r for r in scores.itertuples()}
    human = pairs.label.map({"a": 1, "b": -1, "tie": 0}).to_numpy()
    for m in res.metrics:
        d = np.array([getattr(lookup[a], m) - getattr(lookup[b], m) for a, b in zip(pairs.image_a, pairs.image_b)])
        strict = human != 0
        expected = np.mean(np.sign(d[strict]) == human[strict])
        iv = res.get(m, "accuracy")
        assert iv.estimate == pytest.approx(expected)
        assert iv.low < iv.estimate < iv.high
        for g in ("g1", "g2"):
            sel = (pairs.generator == g).to_numpy() & strict
            assert res.get(m, "accuracy", "generator", g).estimate == pytest.approx(np.mean(np.sign(d[sel]) == human[sel]))
    assert res.get("good", "accuracy").estimate > 0.85
    assert 0.35 < res.get("random", "accuracy").estimate < 0.65
    row = res.table[(res.table.metric == "good") & (res.table.group == "all")].iloc[0]
    assert row.units == 40  # prompts are the resampled unit
    t = res.tests[(res.tests.statistic == "accuracy") & (res.tests.metric_a == "good") & (res.tests.metric_b == "random")].iloc[0]
    assert t.low > 0 and t.p_value < 0.01
    # cross-fitted tie thresholds: one per fold, and the tie accuracy beats always-strict prediction
    assert len(res.thresholds["good"]) == 2
    assert res.get("good", "accuracy_ties").estimate > 0.7


def test_pickapic_protocol_with_split_column(tmp_path):
    # validation: small deltas are ties, big ones are not -> threshold 0.3 on |tanh(d/2)|, then scored on test
    rows, srows = [], []
    val = [(0.1, "tie"), (0.2, "tie"), (3.0, "a"), (-3.0, "b"), (0.5, "tie")]
    test = [(0.05, "tie"), (0.4, "a"), (2.0, "a"), (-2.0, "a")]
    for k, (d, lab) in enumerate(val + test):
        a, b = f"a{k}.png", f"b{k}.png"
        rows.append({"prompt": f"q{k}", "image_a": a, "image_b": b, "label": lab, "split": "validation" if k < len(val) else "test"})
        srows += [{"image": str(tmp_path / a), "pickscore": 20.0 + d}, {"image": str(tmp_path / b), "pickscore": 20.0}]
    res = evaluate(_write(tmp_path, "p.csv", rows), scores=_write(tmp_path, "s.csv", srows),
                   config=EvalConfig(n_boot=0, tie_mode="pickapic"))
    t = res.thresholds["pickscore"][0]
    dv = np.array([d for d, _ in val])
    hv = np.array([{"a": 1, "b": -1, "tie": 0}[lab] for _, lab in val])
    assert t == choose_tie_threshold(dv, hv, "pickapic")[0] == 0.3  # |tanh(0.25)| = .245 <= .3 < |tanh(1.5)|
    # test: tie->tie (1), 0.4 -> |tanh(.2)|=.197 tie vs a (0.5), 2.0 -> a (1), -2.0 -> b vs a (0) = 2.5 / 4
    assert res.get("pickscore", "accuracy_ties").estimate == pytest.approx(2.5 / 4)
    assert res.get("pickscore", "accuracy").estimate == pytest.approx(2 / 3)  # test rows only, tie skipped
    assert any("validation" in n for n in res.notes)


def test_rankings_hpsv2_and_imagereward_protocols(tmp_path):
    rng = np.random.default_rng(3)
    rows, srows, ranking_data = [], [], []
    for p in range(25):
        k = int(rng.integers(3, 6))
        ranks = rng.permutation(k) + 1
        if p % 4 == 0:
            ranks[ranks == 2] = 1  # a human tie
        imgs = [f"r{p}_{i}.png" for i in range(k)]
        sc = -ranks + rng.normal(0, 1.2, k)
        rows.append({"prompt": f"p{p}", "images": json.dumps(imgs), "ranks": json.dumps(ranks.tolist())})
        srows += [{"image": str(tmp_path / im), "prompt": f"p{p}", "m": s} for im, s in zip(imgs, sc)]
        ranking_data.append((sc, ranks))
    res = evaluate(_write(tmp_path, "rank.csv", rows), scores=_write(tmp_path, "s.csv", srows), config=EvalConfig(n_boot=200))
    inv = np.mean([inversion_scores(sc, rk) for sc, rk in ranking_data])
    assert res.get("m", "inversion").estimate == pytest.approx(inv)
    ok = total = 0  # ImageReward: pool every strictly ordered pair, equal scores wrong
    for sc, rk in ranking_data:
        for i, j in combinations(range(len(sc)), 2):
            if rk[i] != rk[j]:
                total += 1
                ok += (sc[i] > sc[j]) == (rk[i] < rk[j]) and sc[i] != sc[j]
    assert res.get("m", "accuracy").estimate == pytest.approx(ok / total)


def test_ratings_correlations_and_mapping(tmp_path):
    rng = np.random.default_rng(4)
    n = 150
    x = rng.uniform(0, 1, n)
    mos = logistic4(x, 4.6, 1.3, 0.5, 0.12) + rng.normal(0, 0.25, n)
    rows = [{"image": f"i{i}.png", "score": mos[i], "iqa": x[i], "distortion": "blur" if i % 3 else "noise"} for i in range(n)]
    path = _write(tmp_path, "mos.csv", rows)
    res = evaluate(path, score_columns=["iqa"], config=EvalConfig(n_boot=200, group_by=("distortion",)))
    assert res.kind == "ratings"
    assert res.get("iqa", "srcc").estimate == pytest.approx(sps.spearmanr(x, mos).statistic)
    assert res.get("iqa", "krcc").estimate == pytest.approx(sps.kendalltau(x, mos).statistic)
    assert res.get("iqa", "plcc").estimate == pytest.approx(sps.pearsonr(x, mos).statistic)
    fit = fit_logistic(x, mos)
    assert res.get("iqa", "plcc_mapped").estimate == pytest.approx(sps.pearsonr(fit.predict(x), mos).statistic)
    assert res.get("iqa", "plcc_mapped").estimate > res.get("iqa", "plcc").estimate
    assert res.get("iqa", "rmse_mapped").estimate == pytest.approx(0.25, rel=0.2)
    sel = np.arange(n) % 3 == 0
    assert res.get("iqa", "srcc", "distortion", "noise").estimate == pytest.approx(sps.spearmanr(x[sel], mos[sel]).statistic)
    iv = res.get("iqa", "srcc")
    assert iv.low < iv.estimate < iv.high


def test_direction_inline_columns_and_missing_scores(tmp_path):
    pairs_csv, scores_csv, pairs, scores = _pairs_dataset(tmp_path, n_prompts=10)
    base = evaluate(pairs_csv, scores=scores_csv, score_columns=["good"], config=EvalConfig(n_boot=0))
    # the same scores negated and declared lower-is-better give the same agreement
    flipped = scores.assign(good=-scores.good)
    flipped.to_csv(tmp_path / "flipped.csv", index=False)
    neg = evaluate(pairs_csv, scores=tmp_path / "flipped.csv", score_columns=["good"], lower_is_better=["good"],
                   config=EvalConfig(n_boot=0))
    assert neg.get("good", "accuracy").estimate == base.get("good", "accuracy").estimate
    assert neg.get("good", "accuracy_ties").estimate == base.get("good", "accuracy_ties").estimate
    # inline columns good_a / good_b in the pairs file
    lookup = dict(zip(scores.image.map(lambda s: Path(s).name), scores.good))
    inline = pairs.assign(good_a=pairs.image_a.map(lookup), good_b=pairs.image_b.map(lookup))
    inline.to_csv(tmp_path / "inline.csv", index=False)
    res = evaluate(tmp_path / "inline.csv", score_columns=["good"], config=EvalConfig(n_boot=0))
    assert res.get("good", "accuracy").estimate == base.get("good", "accuracy").estimate
    # an image missing from the score table is named
    scores.iloc[1:].to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(ScoreLookupError, match=r"1 image\(s\) have no score in .*partial.csv:\n  .*p0_0.png"):
        evaluate(pairs_csv, scores=tmp_path / "partial.csv", config=EvalConfig(n_boot=0))


# -- composites --------------------------------------------------------------------------------------


def _ref(seed=0, n=400):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"image": [f"r{i}.png" for i in range(n)], "a": rng.gamma(2.0, 1.5, n),
                         "b": rng.normal(10, 3, n), "clip-iqa": rng.uniform(0, 1, n)})


@pytest.mark.parametrize("kind,transform", [
    ("percentile", lambda v: np.exp(v / 3) + v ** 3),  # any strictly increasing map
    ("zscore", lambda v: 3.5 * v - 7.0),  # positive affine
    ("robust", lambda v: 0.2 * v + 100.0),
])
def test_normaliser_invariances(kind, transform):
    ref, new = _ref(0), _ref(1, 50)
    cal = calibrate(ref, columns=["a", "b"], normaliser=kind)
    ref_t = ref.assign(a=transform(ref.a), b=transform(ref.b))
    new_t = new.assign(a=transform(new.a), b=transform(new.b))
    cal_t = calibrate(ref_t, columns=["a", "b"], normaliser=kind)
    assert np.allclose(cal.apply(new), cal_t.apply(new_t), atol=1e-9)


@pytest.mark.parametrize("kind", ["zscore", "robust", "percentile"])
def test_direction_handling_and_reference_reuse(tmp_path, kind):
    ref, new = _ref(0), _ref(1, 60)
    cal = calibrate(ref, columns=["a", "b"], normaliser=kind, weights={"a": 0.25, "b": 0.75})
    # declaring a negated column lower-is-better gives the same composite
    flipped = calibrate(ref.assign(b=-ref.b), columns=["a", "b"], normaliser=kind, weights={"a": 0.25, "b": 0.75},
                        lower_is_better=["b"])
    assert np.allclose(cal.apply(new), flipped.apply(new.assign(b=-new.b)))
    # saved and reloaded: identical; every image scored alone equals the batch (no batch normalisation)
    cal.save(tmp_path / "c.json")
    again = Calibration.load(tmp_path / "c.json")
    assert again.fingerprint == cal.fingerprint
    batch = again.apply(new)
    alone = np.array([again.apply(new.iloc[[i]]) for i in range(len(new))]).ravel()
    assert np.allclose(batch, cal.apply(new)) and np.allclose(batch, alone)


def test_percentile_and_minmax_values():
    ref = pd.DataFrame({"image": list("abcd"), "m": [1.0, 2.0, 2.0, 4.0], "clip-iqa": [0.0, 0.5, 0.5, 1.0]})
    cal = calibrate(ref, columns=["m"], normaliser="percentile")
    # mid-rank: below all -> 0, equal to 2.0 (two of four) -> (1 + 3) / 8, above all -> 1
    assert cal.apply({"m": np.array([0.0, 2.0, 3.0, 9.0])}).tolist() == [0.0, 0.5, 0.75, 1.0]
    mm = calibrate(ref, columns=["clip-iqa"], normaliser="minmax")  # declared range (0, 1)
    assert mm.apply({"clip-iqa": np.array([0.25])}).tolist() == [0.25]
    with pytest.raises(CalibrationError, match="no finite declared range"):
        calibrate(ref, columns=["m"], normaliser="minmax")


def test_bradley_terry_weights_recovered():
    rng = np.random.default_rng(0)
    beta = np.array([2.0, -1.0, 0.5])
    diff = rng.normal(size=(20000, 3))
    y = (rng.random(20000) < 1 / (1 + np.exp(-diff @ beta))).astype(float)
    fit = fit_weights(diff, y, l2=0.0)
    assert np.allclose(fit.beta, beta, rtol=0.08)
    assert fit.weights == pytest.approx(beta / np.abs(beta).sum(), abs=0.02)
    assert fit.temperature == pytest.approx(1 / 3.5, rel=0.08)
    nonneg = fit_weights(diff, y, nonnegative=True)
    assert nonneg.beta[1] == 0.0 and (nonneg.beta >= 0).all()


def test_calibrate_learns_weights_from_human_pairs(tmp_path):
    pairs_csv, scores_csv, _, _ = _pairs_dataset(tmp_path, n_prompts=60)
    cal = calibrate(scores_csv, columns=["good", "random"], weights="fit", pairs=pairs_csv)
    assert cal.weights_from == "fit" and cal.temperature > 0
    assert cal.weights["good"] > 0.8 and abs(cal.weights["random"]) < 0.2
    cal.save(tmp_path / "fit.json")
    res = evaluate(pairs_csv, scores=scores_csv, composites={"composite": tmp_path / "fit.json"}, config=EvalConfig(n_boot=0))
    assert res.get("composite", "accuracy").estimate > res.get("random", "accuracy").estimate + 0.2


def test_calibration_file_errors(tmp_path):
    cal = calibrate(_ref(0), columns=["a"])
    p = cal.save(tmp_path / "c.json")
    d = json.loads(p.read_text())
    d["components"][0]["weight"] = 5.0
    p.write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="edited after calibration"):
        Calibration.load(p)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CalibrationError, match="not a prefscore composite"):
        Calibration.load(tmp_path / "bad.json")
    import prefscore

    cal.save(tmp_path / "plain.json")  # column "a" is not a registry metric: precomputed scores only
    with pytest.raises(CalibrationError, match="not a registry metric"):
        prefscore.load("composite", model=tmp_path / "plain.json")


# -- warnings -------------------------------------------------------------------------------------


def _table(values: dict, prompts=None, n=None) -> ScoreTable:
    n = n or len(next(iter(values.values())))
    return ScoreTable([f"img{i}.png" for i in range(n)], prompts, {k: np.asarray(v, float) for k, v in values.items()})


def test_reward_hacking_warning():
    rng = np.random.default_rng(0)
    n = 200
    prompts = [f"p{i % 50}" for i in range(n)]
    before = _table({"hpsv2": rng.normal(0.27, 0.01, n), "laion-aesthetic": rng.normal(6, 0.5, n),
                     "clipscore": rng.normal(0.8, 0.05, n)}, prompts)
    after = _table({"hpsv2": rng.normal(0.29, 0.01, n), "laion-aesthetic": rng.normal(5.6, 0.5, n),
                    "clipscore": rng.normal(0.8, 0.05, n)}, prompts)
    findings, changes = reward_hacking(before, after, "hpsv2")
    kinds = {(f.kind, f.metric) for f in findings}
    assert ("reward_hacking", "laion-aesthetic") in kinds
    assert ("reward_hacking", "clipscore") not in kinds
    row = changes[changes.metric == "hpsv2"].iloc[0]
    assert row.change_sd == pytest.approx(2.0, abs=0.4) and row.paired
    # no gain on the target: no warning even though another metric falls
    findings, _ = reward_hacking(before, before, "hpsv2")
    assert not [f for f in findings if f.kind == "reward_hacking"]


def test_human_agreement_drop_warning(tmp_path):
    pairs_csv, scores_csv, _, scores = _pairs_dataset(tmp_path, 40, 0)
    # "after": the metric's scores no longer track the human judgements (random values under its name)
    scores.assign(good=scores.random).to_csv(tmp_path / "after.csv", index=False)
    before = evaluate(pairs_csv, scores=scores_csv, score_columns=["good"], config=EvalConfig(n_boot=300))
    after = evaluate(pairs_csv, scores=tmp_path / "after.csv", score_columns=["good"], config=EvalConfig(n_boot=300, seed=1))
    rng = np.random.default_rng(0)
    t1 = _table({"good": rng.normal(0, 1, 100)}, [f"p{i}" for i in range(100)])
    t2 = _table({"good": rng.normal(1, 1, 100)}, [f"p{i}" for i in range(100)])
    findings, _ = reward_hacking(t1, t2, "good", agreement_before=before, agreement_after=after)
    drop = [f for f in findings if f.kind == "human_agreement_drop"]
    assert drop and drop[0].details["before"] > 0.85 > 0.65 > drop[0].details["after"]
    assert drop[0].details["high"] < 0
    findings, _ = reward_hacking(t1, t2, "good", agreement_before=before, agreement_after=before)
    assert not [f for f in findings if f.kind == "human_agreement_drop"]


def test_pinned_and_plateau():
    rng = np.random.default_rng(1)
    v = rng.uniform(0.2, 0.9, 100)
    v[:30] = 1.0  # clip-iqa's declared range is (0, 1)
    w = rng.normal(5, 1, 100)
    w[:10] = w.max() + 1  # an unbounded metric stuck on one value
    findings = pinned_scores(_table({"clip-iqa": v, "laion-aesthetic": w, "hpsv2": rng.normal(0.27, 0.01, 100)}))
    got = {(f.kind, f.metric) for f in findings}
    assert ("pinned", "clip-iqa") in got and ("plateau", "laion-aesthetic") in got
    assert not [f for f in findings if f.metric == "hpsv2"]
    pinned = next(f for f in findings if f.kind == "pinned")
    assert pinned.details["fraction"] == pytest.approx(0.30) and pinned.details["side"] == "upper"


def test_disagreement_ranking_and_alignment_vs_aesthetic():
    n = 20
    base = np.arange(n, dtype=float)
    al, ae = base.copy(), base.copy()
    al[7], ae[7] = -1.0, 100.0  # image 7: worst alignment, best aesthetics
    table = _table({"clipscore": al / 40 + 0.3, "laion-aesthetic": ae})
    dis = disagreements(table, top=5)
    assert dis.iloc[0].image == "img7.png"
    assert dis.iloc[0].spread == pytest.approx((n - 1) / n)
    assert dis.iloc[0].best_by == "laion-aesthetic" and dis.iloc[0].worst_by == "clipscore"
    findings, flagged = alignment_vs_aesthetic(table)
    assert flagged.image.tolist() == ["img7.png"]
    assert findings and findings[0].details["count"] == 1
