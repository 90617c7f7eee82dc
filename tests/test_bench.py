"""prefscore bench: each adapter on a miniature set in its published on-disk layout, each protocol against
a hand-computed figure, and `prefscore bench` end to end (real tiny metric, and precomputed scores)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

from conftest import shared_fixture
from prefscore.bench import DATASETS, FIGURES, BenchConfig, get_dataset, lookup, run_bench
from prefscore.bench.cli import register
from prefscore.data import DataError

RNG = np.random.default_rng(0)


def _image(path: Path, seed: int, size=(24, 20), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _scores_csv(path: Path, scores: dict[str, float], column: str = "myscore") -> Path:
    pd.DataFrame({"image": list(scores), column: list(scores.values())}).to_csv(path, index=False)
    return path


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so that `bench` is a sub-command as in the real app
        pass

    register(app)
    return app


# -- HPD v2 -----------------------------------------------------------------------------------------

HPD_RANKS = {"a horse": [1, 2, 3, 4], "a boat": [1, 2, 3], "a tree": [1, 1, 2]}
HPD_SCORES = {"a horse": [4.0, 3.0, 2.0, 1.0], "a boat": [1.0, 2.0, 3.0], "a tree": [1.0, 2.0, 3.0]}


def make_hpdv2(root: Path) -> tuple[Path, dict[str, float]]:
    """HPD v2 layout: test.json + test/<files>; rank: lower = preferred, equal = tie."""
    entries, scores, seed = [], {}, 0
    for prompt, ranks in HPD_RANKS.items():
        paths = []
        for k, s in enumerate(HPD_SCORES[prompt]):
            name = f"{seed:05d}.jpg"
            _image(root / "test" / name, seed)
            scores[name] = s
            paths.append(name)
            seed += 1
        entries.append({"prompt": prompt, "image_path": paths, "rank": ranks,
                        "raw_annotations": [ranks], "user_hash": ["u0"]})
    (root / "test.json").write_text(json.dumps(entries))
    return root, scores


def test_hpdv2_adapter_and_inversion_protocol(tmp_path):
    root, scores = make_hpdv2(tmp_path / "HPDv2")
    bench = get_dataset("hpdv2").load(root)
    assert bench.kind == "rankings" and len(bench.judgements) == 3
    assert bench.image_root == root / "test"
    rec = bench.judgements.records[2]
    assert rec.prompt == "a tree" and rec.images == ("00007.jpg", "00008.jpg", "00009.jpg") and rec.ranks == (1, 1, 2)
    chunks = list(bench.chunks(4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert chunks[0][0].source == str(root / "test" / "00000.jpg") and chunks[2][1].prompt == "a tree"

    result = run_bench(bench, (), scores=_scores_csv(tmp_path / "s.csv", scores), score_columns=["myscore"],
                       config=BenchConfig(n_boot=200))
    got = {(r.metric, r.statistic): r for r in result.rows}
    # per prompt: 1 (all concordant), 0 (all 3 pairs inverted), 1 - 2/3 (the tied pair is never discordant)
    assert got["myscore", "inversion"].estimate == pytest.approx((1 + 0 + 1 / 3) / 3)
    # pooled strict pairs: 6 of 6, 0 of 3, 0 of 2 (the tie is skipped)
    assert got["myscore", "accuracy"].estimate == pytest.approx(6 / 11)
    assert got["myscore", "inversion"].units == 3 and got["myscore", "inversion"].published is None


# -- ImageReward ------------------------------------------------------------------------------------

def _imagereward_acc(rankings, rewards) -> float:
    """ImageReward test.py `acc`, re-typed: strict human pairs, equal rewards wrong, ties skipped, pooled."""
    tol = true = 0
    for base, item in zip(rankings, rewards):
        for i in range(len(base)):
            for j in range(i + 1, len(base)):
                if base[i] > base[j]:
                    tol += 1
                    true += item[i] < item[j]
                elif base[i] < base[j]:
                    tol += 1
                    true += item[i] > item[j]
    return true / tol


def make_imagereward(root: Path) -> tuple[Path, dict[str, float], list, list]:
    rankings = [[1, 2, 2, 3], [2, 1, 3], [1, 5, 2, 3]]
    rewards = [[3.0, 2.0, 2.0, 1.0], [1.0, 1.0, 0.0], [0.5, 0.9, 0.1, 0.2]]
    entries, scores = [], {}
    for n, (ranking, reward) in enumerate(zip(rankings, rewards)):
        gens = []
        for k, r in enumerate(reward):
            rel = f"part-00000{n}/images/{n:04d}/img-{k}.webp"
            _image(root / "data" / "test_images" / rel, 100 + 10 * n + k, fmt="WEBP")
            gens.append(rel)
            scores[rel] = r
        entries.append({"id": f"00000{n}-{n:04d}", "prompt": f"prompt {n}", "generations": gens, "ranking": ranking})
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "test.json").write_text(json.dumps(entries, indent=4))
    return root, scores, rankings, rewards


def test_imagereward_adapter_and_pooled_accuracy(tmp_path):
    root, scores, rankings, rewards = make_imagereward(tmp_path / "ImageReward")
    bench = get_dataset("imagereward").load(root)  # finds data/test.json and data/test_images
    assert bench.image_root == root / "data" / "test_images"
    assert len(bench.item_keys()) == 11
    result = run_bench(bench, (), scores=_scores_csv(tmp_path / "s.csv", scores), score_columns=["myscore"],
                       config=BenchConfig(n_boot=100))
    acc = next(r for r in result.rows if r.statistic == "accuracy")
    # prompt 0: 5 of 5 (tie skipped); prompt 1: 2 of 3 (equal rewards wrong); prompt 2: 2 of 6
    assert acc.estimate == pytest.approx(9 / 14)
    assert acc.estimate == pytest.approx(_imagereward_acc(rankings, rewards))
    assert acc.n == 14


# -- Pick-a-Pic -------------------------------------------------------------------------------------

# (d = s_0 - s_1, label_0); with tau = 1, |p_0 - p_1| = |tanh(d / 2)|
PICK_VAL = [(0.1, 0.5), (0.2, 0.5), (3.0, 1.0), (-2.0, 0.0)]
PICK_TEST = [(0.05, 0.5), (1.0, 1.0), (1.0, 0.0), (0.1, 1.0), (-0.5, 0.5)]


def make_pickapic(root: Path, val="validation_unique", test="test_unique") -> tuple[Path, dict[str, float]]:
    """Pick-a-Pic layout: data/<split>-00000-of-00001.parquet with the hub's columns (jpg_* = bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scores, seed = {}, 0
    for split, rows in ((val, PICK_VAL), (test, PICK_TEST)):
        records = []
        for n, (d, label0) in enumerate(rows):
            u0, u1 = f"{split}-{n}-a", f"{split}-{n}-b"
            scores[u0], scores[u1] = 1.0 + d, 1.0
            records.append({
                "are_different": True, "best_image_uid": u0 if label0 == 1 else (u1 if label0 == 0 else ""),
                "caption": f"{split} caption {n}", "created_at": pd.Timestamp("2023-03-01"), "has_label": True,
                "image_0_uid": u0, "image_0_url": "", "image_1_uid": u1, "image_1_url": "",
                "jpg_0": _jpeg_bytes(seed), "jpg_1": _jpeg_bytes(seed + 1), "label_0": label0, "label_1": 1 - label0,
                "model_0": "sd-1.5", "model_1": "sd-2.1", "ranking_id": n, "user_id": 7, "num_example_per_prompt": 1,
                "__index_level_0__": n})
            seed += 2
        (root / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(records), root / "data" / f"{split}-00000-of-00001-0123abcd.parquet")
    return root, scores


def test_pickapic_adapter_streams_parquet_images(tmp_path):
    root, _ = make_pickapic(tmp_path / "pickapic_v1")
    bench = get_dataset("pickapic-v1-unique").load(root)
    assert bench.kind == "pairs" and bench.tie_mode == "pickapic"
    assert bench.columns["split"] == ["validation"] * 4 + ["test"] * 5
    labels = [r.label for r in bench.judgements.records]
    assert labels == ["tie", "tie", "a", "b", "tie", "a", "b", "a", "tie"]
    chunks = list(bench.chunks(4))
    assert [len(c) for c in chunks] == [4, 4, 4, 4, 2]
    first = chunks[0][0]
    assert first.key == "validation_unique-0-a" and first.prompt == "validation_unique caption 0"
    assert first.source == _jpeg_bytes(0)
    small = bench.head(2)
    assert small.columns["split"] == ["validation", "validation", "test", "test"]
    assert sum(len(c) for c in small.chunks(3)) == 8
    with pytest.raises(DataError, match="split .validation. \\(expected files named validation-"):
        get_dataset("pickapic-v1").load(root)  # the full test split is not in this folder


def test_pickapic_tie_protocol_threshold_from_validation(tmp_path):
    root, scores = make_pickapic(tmp_path / "pickapic_v1")
    bench = get_dataset("pickapic-v1-unique").load(root)
    result = run_bench(bench, (), scores=_scores_csv(tmp_path / "s.csv", scores), score_columns=["myscore"],
                       config=BenchConfig(n_boot=100, temperatures={"myscore": 1.0}))
    got = {r.statistic: r for r in result.rows}
    # validation: t = 0 gives 3/4, t = 0.1 .. 0.7 give 4/4 -> t = 0.1 (smallest best)
    assert result.evaluation.thresholds["myscore"] == [pytest.approx(0.1)]
    # test with t = 0.1: tie/tie 1, a/a 1, a vs b 0, tie vs a 0.5, b vs tie 0.5
    assert got["accuracy_ties"].estimate == pytest.approx(3.0 / 5)
    assert got["accuracy_ties"].n == 5
    assert got["accuracy"].estimate == pytest.approx(2 / 3)  # strict test pairs only


# -- rating sets ------------------------------------------------------------------------------------

def make_ava(root: Path) -> tuple[Path, dict[str, float], dict[str, float]]:
    hist = {"953619": [0, 0, 0, 0, 1, 1, 0, 0, 0, 0], "953958": [0, 0, 1, 0, 0, 0, 0, 0, 0, 1],
            "954184": [2, 0, 0, 0, 0, 0, 0, 0, 0, 0], "954113": [0, 0, 0, 0, 0, 0, 0, 3, 1, 0],
            "999999": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}  # no image file: left out with a note
    lines = []
    for n, (image_id, counts) in enumerate(hist.items(), start=1):
        lines.append(" ".join([str(n), image_id, *map(str, counts), "1", "22", "1396"]))
        if image_id != "999999":
            _image(root / "images" / f"{image_id}.jpg", n)
    root.mkdir(parents=True, exist_ok=True)
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    mos = {"953619.jpg": 5.5, "953958.jpg": 6.5, "954184.jpg": 1.0, "954113.jpg": (8 * 3 + 9) / 4}
    scores = {"953619.jpg": 0.2, "953958.jpg": 0.1, "954184.jpg": -1.0, "954113.jpg": 0.9}
    return root, mos, scores


def test_ava_adapter_histogram_mean_and_correlations(tmp_path):
    root, mos, scores = make_ava(tmp_path / "AVA_dataset")
    bench = get_dataset("ava").load(root)
    assert {r.image: r.score for r in bench.judgements.records} == pytest.approx(mos)
    assert any("1 image file(s)" in n for n in bench.notes)
    result = run_bench(bench, (), scores=_scores_csv(tmp_path / "s.csv", scores), score_columns=["myscore"],
                       config=BenchConfig(n_boot=50))
    got = {r.statistic: r for r in result.rows}
    keys = list(mos)
    x, y = [scores[k] for k in keys], [mos[k] for k in keys]
    assert got["srcc"].estimate == pytest.approx(stats.spearmanr(x, y).statistic)
    assert got["plcc"].estimate == pytest.approx(stats.pearsonr(x, y).statistic)
    assert got["krcc"].estimate == pytest.approx(stats.kendalltau(x, y).statistic)
    assert got["srcc"].units == 4  # no prompts: each image is its own bootstrap unit

    (root / "generic_test.jpgl").write_text("953619\n954113\n")
    sub = get_dataset("ava").load(root, {"test_list": "generic_test.jpgl"})
    assert sorted(sub.item_keys()) == ["953619.jpg", "954113.jpg"]


def test_koniq_adapter_both_score_files_and_split(tmp_path):
    root = tmp_path / "koniq10k"
    names = [f"{826373 + i}.jpg" for i in range(5)]
    for i, n in enumerate(names):
        _image(root / "1024x768" / n, 200 + i)
    counts = [[0, 10, 40, 50, 0], [5, 20, 50, 25, 0], [1, 2, 3, 4, 90], [70, 20, 10, 0, 0], [0, 0, 100, 0, 0]]
    rows = []
    for n, c in zip(names, counts):
        mos = sum((k + 1) * v for k, v in enumerate(c)) / sum(c)
        rows.append({"image_name": n, "c1": c[0], "c2": c[1], "c3": c[2], "c4": c[3], "c5": c[4], "c_total": sum(c),
                     "MOS": mos, "SD": 0.5, "MOS_zscore": 20 * mos})
    pd.DataFrame(rows).to_csv(root / "koniq10k_scores_and_distributions.csv", index=False)
    bench = get_dataset("koniq10k").load(root)
    assert bench.image_root == root / "1024x768"
    assert [r.score for r in bench.judgements.records] == pytest.approx([r["MOS"] for r in rows])

    sets = pd.DataFrame(rows).drop(columns=["MOS_zscore"]).assign(set=["training", "test", "test", "validation", "test"])
    (root / "koniq10k_scores_and_distributions.csv").unlink()
    sets.to_csv(root / "koniq10k_distributions_sets.csv", index=False)
    test_only = get_dataset("koniq10k").load(root, {"split": "test"})
    assert test_only.item_keys() == [names[1], names[2], names[4]]
    scores = {n: float(s) for n, s in zip(names, [3.0, 1.0, 5.0, 0.0, 2.0])}
    result = run_bench(test_only, (), scores=_scores_csv(tmp_path / "s.csv", scores), score_columns=["myscore"],
                       config=BenchConfig(n_boot=0))
    srcc = next(r for r in result.rows if r.statistic == "srcc")
    assert srcc.estimate == pytest.approx(1.0) and math.isnan(srcc.low)  # no bootstrap -> no interval


def test_spaq_adapter_reads_the_xlsx(tmp_path):
    root = tmp_path / "SPAQ"
    (root / "Annotations").mkdir(parents=True)
    names = ["00001.png", "00002.png", "00003.png"]
    for i, n in enumerate(names):
        _image(root / "TestImage" / n, 300 + i)
    frame = pd.DataFrame({"Image name": names, "MOS": [42.0, 73.5, 12.25], "Brightness": [50, 60, 10],
                          "Colorfulness": [40, 70, 20], "Contrast": [45, 65, 15], "Noisiness": [55, 75, 12],
                          "Sharpness": [35, 80, 9]})
    frame.to_excel(root / "Annotations" / "MOS and Image attribute scores.xlsx", index=False)
    bench = get_dataset("spaq").load(root)
    assert bench.image_root == root / "TestImage"
    assert [(r.image, r.score) for r in bench.judgements.records] == list(zip(names, [42.0, 73.5, 12.25]))


def test_agiqa3k_quality_and_alignment(tmp_path):
    root = tmp_path / "AGIQA-3K"
    names = ["AttnGAN_normal_000.jpg", "sd1.5_normal_000.jpg", "midjourney_normal_001.jpg", "xl2.2_normal_001.jpg"]
    for i, n in enumerate(names):
        _image(root / n, 400 + i)
    pd.DataFrame({"name": names, "prompt": ["a cat", "a cat", "a dog, oil", "a dog, oil"],
                  "adj1": ["", "", "oil", "oil"], "adj2": ["", "", "", ""], "style": ["", "", "", ""],
                  "mos_quality": [1.5, 3.0, 4.0, 2.5], "std_quality": [0.5] * 4,
                  "mos_align": [2.0, 3.5, 4.5, 1.0], "std_align": [0.4] * 4}).to_csv(root / "data.csv", index=False)
    quality = get_dataset("agiqa-3k").load(root)
    align = get_dataset("agiqa-3k-align").load(root)
    assert [r.score for r in quality.judgements.records] == [1.5, 3.0, 4.0, 2.5]
    assert [r.score for r in align.judgements.records] == [2.0, 3.5, 4.5, 1.0]
    assert quality.judgements.has_prompts and quality.judgements.records[2].prompt == "a dog, oil"
    scores = {n: s for n, s in zip(names, [0.1, 0.2, 0.4, 0.3])}
    result = run_bench(quality, (), scores=_scores_csv(tmp_path / "s.csv", scores), score_columns=["myscore"],
                       config=BenchConfig(n_boot=20))
    srcc = next(r for r in result.rows if r.statistic == "srcc")
    assert srcc.estimate == pytest.approx(stats.spearmanr([0.1, 0.2, 0.4, 0.3], [1.5, 3.0, 4.0, 2.5]).statistic)
    assert srcc.units == 2  # the two prompts are the bootstrap units


def test_adapter_errors_name_the_file_and_reason(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "test.json").write_text(json.dumps([{"prompt": "x", "image_path": ["a.jpg"], "rank": [1, 2]}]))
    with pytest.raises(DataError, match=r"test.json, entry 0: image_path and rank must be lists of the same length"):
        get_dataset("hpdv2").load(root)
    (root / "data.csv").write_text("name,prompt,mos\nx.jpg,a,3\n")
    with pytest.raises(DataError, match="missing column.*mos_quality"):
        get_dataset("agiqa-3k").load(root)
    (root / "AVA.txt").write_text("1 12345 0 0 x 0 0 0 0 0 0 0 1 2 3\n")
    with pytest.raises(DataError, match="AVA.txt, line 1: vote counts"):
        get_dataset("ava").load(root)
    (root / "ok.json").write_text("[]")
    with pytest.raises(DataError, match="none of the images was found"):
        (root / "test.json").write_text(json.dumps([{"prompt": "x", "image_path": ["a.jpg", "b.jpg"], "rank": [1, 2]}]))
        get_dataset("hpdv2").load(root)
    with pytest.raises(KeyError, match="Did you mean 'hpdv2'"):
        get_dataset("hpdv3")
    with pytest.raises(ValueError, match="no option"):
        get_dataset("spaq").load(root, {"split": "test"})
    from prefscore.bench import resolve_path

    with pytest.raises(OSError, match="data/test_unique-\\*.parquet yourself"):  # conftest keeps the hub offline
        resolve_path(get_dataset("pickapic-v2-unique"), None)
    with pytest.raises(ValueError, match="give its folder as --dataset ava:PATH"):
        resolve_path(get_dataset("ava"), None)


def test_pickapic_parquet_converter_layout(tmp_path):
    """The hub's parquet-converter branch stores default/<split>/0000.parquet: read the same."""
    root, _ = make_pickapic(tmp_path / "p")
    for split in ("validation_unique", "test_unique"):
        (root / "default" / split).mkdir(parents=True)
        next((root / "data").glob(f"{split}-*.parquet")).rename(root / "default" / split / "0000.parquet")
    bench = get_dataset("pickapic-v1-unique").load(root)
    assert bench.columns["split"] == ["validation"] * 4 + ["test"] * 5


# -- published figures ------------------------------------------------------------------------------

def test_published_figures_are_well_formed():
    seen = set()
    for f in FIGURES:
        assert f.dataset in DATASETS, f
        assert f.source and f.tag in ("code", "readme", "paper, unverified", "readme, protocol unverified"), f
        assert (-1.0 <= f.value <= 1.0), f
        key = (f.dataset, f.metric, f.statistic)
        assert key not in seen, f"duplicate figure {key}"
        seen.add(key)
    assert lookup("hpdv2", "hpsv2", "inversion").value == pytest.approx(0.833)
    assert lookup("imagereward", "imagereward", "accuracy").value == pytest.approx(0.651)
    assert not lookup("pickapic-v1-unique", "pickscore", "accuracy_ties").verified
    assert lookup("ava", "laion-aesthetic", "srcc").value == pytest.approx(0.665)


def test_published_statistics_are_reported_by_their_data_set(tmp_path):
    """Each figure's statistic is among those its data set's adapter reports (else it could never be shown)."""
    root, _ = make_hpdv2(tmp_path / "h")
    reported = {"hpdv2": get_dataset("hpdv2").load(root).statistics}
    root, *_ = make_imagereward(tmp_path / "i")
    reported["imagereward"] = get_dataset("imagereward").load(root).statistics
    root, _ = make_pickapic(tmp_path / "p", "validation", "test")
    reported["pickapic-v2"] = get_dataset("pickapic-v2").load(root).statistics
    make_pickapic(tmp_path / "p")
    reported["pickapic-v1-unique"] = get_dataset("pickapic-v1-unique").load(root).statistics
    root, *_ = make_ava(tmp_path / "a")
    reported["ava"] = reported["koniq10k"] = reported["spaq"] = get_dataset("ava").load(root).statistics
    for f in FIGURES:
        assert f.statistic in reported[f.dataset], f


# -- end to end ---------------------------------------------------------------------------------------

def test_cli_bench_real_hpsv2_on_hpdv2(tmp_path, monkeypatch):
    """`prefscore bench` with the tiny HPSv2 checkpoint: the figure is the inversion score of the very
    scores the metric gives these files, and the published 0.833 sits beside it."""
    import prefscore

    from prefscore.bench import cli as bench_cli

    monkeypatch.setattr(bench_cli.console, "width", 200)  # the whole table, whatever the test terminal
    model = shared_fixture("hpsv2") / "model"
    root, _ = make_hpdv2(tmp_path / "HPDv2")
    out = tmp_path / "bench.csv"
    res = CliRunner().invoke(_app(), ["bench", "--dataset", f"hpdv2:{root}", "--metrics", "hpsv2",
                                      "--model", f"hpsv2={model}", "--bootstrap", "200", "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out)
    row = table[(table.metric == "hpsv2") & (table.statistic == "inversion")].iloc[0]
    assert row.published == pytest.approx(0.833) and row.published_tag == "readme"
    # 3 rankings of 3 prompts: fewer than the 6 units an interval needs, so no CI and no within/outside status
    assert math.isnan(row.low) and math.isnan(row.high) and pd.isna(row.status)

    metric = prefscore.load("hpsv2", model=model)
    expected = []
    for entry in json.loads((root / "test.json").read_text()):
        s = metric.score([root / "test" / p for p in entry["image_path"]], entry["prompt"])
        order = np.argsort(-s, kind="stable")
        pred = np.empty(len(s))
        pred[order] = np.arange(len(s))
        r = entry["rank"]
        bad = sum(1 for i in range(len(s)) for j in range(i + 1, len(s))
                  if (pred[i] > pred[j] and r[i] < r[j]) or (pred[i] < pred[j] and r[i] > r[j]))
        expected.append(1 - bad / (len(s) * (len(s) - 1) / 2))
    assert row.estimate == pytest.approx(np.mean(expected))
    assert "│ hpsv2  │ inversion │" in res.output and "[readme]" in res.output
    assert "tie threshold" not in res.output  # HPD v2 reports no tie statistic


def test_cli_bench_precomputed_scores_on_pickapic(tmp_path):
    root, scores = make_pickapic(tmp_path / "pickapic_v1")
    score_file = _scores_csv(tmp_path / "scores.csv", scores, column="pickscore")
    out = tmp_path / "bench.csv"
    res = CliRunner().invoke(_app(), ["bench", "-d", f"pickapic-v1-unique:{root}", "-m", "pickscore",
                                      "--scores", str(score_file), "--temperature", "pickscore=1",
                                      "--bootstrap", "300", "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out).set_index("statistic")
    assert table.loc["accuracy_ties", "estimate"] == pytest.approx(0.6)
    assert table.loc["accuracy_ties", "published"] == pytest.approx(0.702)
    assert table.loc["accuracy_ties", "published_tag"] == "paper, unverified"
    low, high = table.loc["accuracy_ties", ["low", "high"]]
    # 5 test pairs of 5 prompts: fewer than the 6 units an interval needs, so no CI and no within/outside status
    assert math.isnan(low) and math.isnan(high) and pd.isna(table.loc["accuracy_ties", "status"])
    assert table.loc["accuracy", "estimate"] == pytest.approx(2 / 3)

    # ids missing from the score file are named
    pd.read_csv(score_file).iloc[:-1].to_csv(score_file, index=False)
    res = CliRunner().invoke(_app(), ["bench", "-d", f"pickapic-v1-unique:{root}", "-m", "pickscore",
                                      "--scores", str(score_file)])
    assert res.exit_code == 2 and "test_unique-4-b" in res.output


def test_run_bench_scores_parquet_bytes_with_a_real_metric(tmp_path):
    """Scoring streamed from parquet bytes equals scoring the decoded images directly."""
    import prefscore

    metric = prefscore.load("laion-aesthetic", model=shared_fixture("laion-aesthetic") / "model")
    root, _ = make_pickapic(tmp_path / "p")
    bench = get_dataset("pickapic-v1-unique").load(root)
    result = run_bench(bench, ["laion-aesthetic"], loaded={"laion-aesthetic": metric},
                       config=BenchConfig(n_boot=50, chunk_size=5))
    table = result.scores
    direct = metric.score([io.BytesIO(_jpeg_bytes(s)).getvalue() for s in range(18)])
    assert table.images[:2] == ["validation_unique-0-a", "validation_unique-0-b"]
    # same images and pipeline; only the batch composition differs (chunks of 5 vs 16): float32 rounding
    assert table.values["laion-aesthetic"] == pytest.approx(direct, rel=1e-4, abs=1e-5)
    assert any("has no preference temperature" in n for n in result.notes)
    assert {r.statistic for r in result.rows} == {"accuracy_ties", "accuracy"}
