"""Judgement files: the three kinds, the three formats, row-numbered validation and the by-prompt split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prefscore.data import DataError, Judgements, Pair, Ranking, Rating, load_judgements, rating_pairs, write_judgements


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name in "abcdef":
        Image.new("RGB", (4, 4), (10 * ord(name) % 255, 0, 0)).save(tmp_path / "img" / f"{name}.png")
    return tmp_path


def test_pairs_csv_paths_labels_margin(folder):
    (folder / "p.csv").write_text(
        "prompt,image_a,image_b,label,margin\n"
        "a fox,img/a.png,img/b.png,A,\n"
        "a fox,img/c.png,img/d.png, tie ,\n"
        "a cat,img/e.png," + str(folder / "img" / "f.png") + ",b,0.5\n"
    )
    j = load_judgements(folder / "p.csv")
    assert j.kind == "pairs" and len(j) == 3 and j.has_prompts
    p0, p1, p2 = j.records
    assert p0.image_a == str(folder / "img" / "a.png")  # relative to the file
    assert (p0.label, p1.label, p2.label) == ("a", "tie", "b")
    assert (p0.target, p1.target, p2.target) == (1.0, 0.5, 0.0)
    assert (p0.margin, p2.margin) == (0.0, 0.5)
    assert p2.image_b == str(folder / "img" / "f.png")  # absolute kept
    assert p1.row == "p.csv, line 3"
    assert j.prompts() == ["a fox", "a cat"]
    assert len(j.images()) == 6


def test_rankings_jsonl_expand_like_imagereward(folder):
    rows = [{"prompt": "x", "images": ["img/a.png", "img/b.png", "img/c.png", "img/d.png"], "ranks": [2, 1, 3, 1]}]
    (folder / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    j = load_judgements(folder / "r.jsonl")
    assert j.kind == "rankings"
    pairs = j.pairs()
    # C(4,2) = 6 pairs minus the tied (b, d) pair; the better image is always image_a
    got = {(Path(p.image_a).stem, Path(p.image_b).stem) for p in pairs}
    assert got == {("b", "a"), ("a", "c"), ("d", "a"), ("b", "c"), ("d", "c")}
    assert all(p.label == "a" for p in pairs)


def test_rankings_csv_json_cells_and_parquet_ratings(folder):
    (folder / "r.csv").write_text('prompt,images,ranks\nq,"[""img/a.png"", ""img/b.png""]","[2, 1]"\n')
    r = load_judgements(folder / "r.csv")
    assert r.kind == "rankings" and Path(r.pairs()[0].image_a).stem == "b"
    ratings = [Rating("p1", str(folder / "img" / f"{n}.png"), s) for n, s in zip("abc", (1.0, 3.5, 2.0))]
    path = write_judgements(folder / "ratings.parquet", ratings)
    j = load_judgements(path)
    assert j.kind == "ratings" and [x.score for x in j.records] == [1.0, 3.5, 2.0]
    assert j.records[1].image == str(folder / "img" / "b.png")
    assert j.records[0].row == "ratings.parquet, row 1"
    pairs = rating_pairs(j.records)
    assert {(Path(p.image_a).stem, Path(p.image_b).stem) for p in pairs} == {("b", "a"), ("c", "a"), ("b", "c")}


def test_every_bad_row_is_reported_with_its_line(folder):
    (folder / "bad.csv").write_text(
        "prompt,image_a,image_b,label,margin\n"
        "ok,img/a.png,img/b.png,a,\n"
        "bad label,img/a.png,img/b.png,left,\n"
        "missing image,img/a.png,img/zzz.png,b,\n"
        "bad margin,img/a.png,img/b.png,a,lots\n"
        "negative margin,img/a.png,img/b.png,a,-1\n"
        ",img/a.png,img/b.png,a,\n"
    )
    with pytest.raises(DataError) as info:
        load_judgements(folder / "bad.csv")
    err = info.value
    where = [w for w, _ in err.problems]
    assert where == ["bad.csv, line 3", "bad.csv, line 4", "bad.csv, line 5", "bad.csv, line 6", "bad.csv, line 7"]
    text = str(err)
    assert "label 'left' is not one of a, b, tie" in text
    assert "image file not found" in text and "zzz.png" in text
    assert "margin 'lots' is not a number" in text
    assert "margin -1.0 is negative" in text
    assert "prompt is missing" in text


def test_unknown_columns_bad_json_and_kind_mismatch(folder):
    (folder / "x.csv").write_text("file,rating\na.png,3\n")
    with pytest.raises(DataError, match="cannot tell the kind"):
        load_judgements(folder / "x.csv")
    (folder / "x.jsonl").write_text('{"image": "img/a.png", "score": 1}\n{not json}\n[1, 2]\n')
    with pytest.raises(DataError) as info:
        load_judgements(folder / "x.jsonl")
    assert [w for w, _ in info.value.problems] == ["x.jsonl, line 2", "x.jsonl, line 3"]
    (folder / "y.jsonl").write_text('{"image": "img/a.png", "score": "high"}\n{"image": "img/b.png", "score": Infinity}\n{"image": "img/c.png", "score": NaN}\n')
    with pytest.raises(DataError) as info:
        load_judgements(folder / "y.jsonl")
    text = str(info.value)
    assert "line 1: score 'high' is not a number" in text and "line 2: score inf is not finite" in text
    assert "line 3: score missing (empty or NaN)" in text
    (folder / "z.jsonl").write_text('{"image": "img/a.png", "score": 2}\n')
    with pytest.raises(DataError, match="expected pairs but the columns"):
        load_judgements(folder / "z.jsonl", kind="pairs")
    with pytest.raises(DataError, match="unsupported file type"):
        (folder / "z.txt").write_text("x")
        load_judgements(folder / "z.txt")


def test_split_keeps_each_prompt_on_one_side():
    records = [Pair(f"prompt {i % 17}", f"a{i}.png", f"b{i}.png", "a", 0.0, f"f, line {i + 2}") for i in range(200)]
    j = Judgements("pairs", records)
    train, val = j.split(val_fraction=0.25, seed=3)
    assert len(train) + len(val) == 200
    assert not set(train.prompts()) & set(val.prompts())
    assert len(val.prompts()) == round(0.25 * 17)
    again = j.split(val_fraction=0.25, seed=3)[1]
    assert [r.row for r in again] == [r.row for r in val]  # deterministic
    other = j.split(val_fraction=0.25, seed=4)[1]
    assert set(other.prompts()) != set(val.prompts())
    # without prompts every record is its own group
    np_j = Judgements("pairs", [Pair("", f"a{i}", f"b{i}", "b", 0.0, f"r{i}") for i in range(10)], has_prompts=False)
    tr, va = np_j.split(0.3, 0)
    assert len(va) == 3 and not {r.row for r in tr} & {r.row for r in va}


def test_write_read_round_trip(folder):
    recs = [Pair("p", str(folder / "img/a.png"), str(folder / "img/b.png"), "tie"),
            Pair("q", str(folder / "img/c.png"), str(folder / "img/d.png"), "b", 0.25)]
    for suffix in (".csv", ".jsonl", ".parquet"):
        path = write_judgements(folder / f"rt{suffix}", recs)
        back = load_judgements(path)
        assert [(r.prompt, r.image_a, r.image_b, r.label, r.margin) for r in back] == \
               [(r.prompt, r.image_a, r.image_b, r.label, r.margin) for r in recs]
    rk = [Ranking("p", (str(folder / "img/a.png"), str(folder / "img/b.png"), str(folder / "img/c.png")), (1.0, 3.0, 2.0))]
    back = load_judgements(write_judgements(folder / "rk.jsonl", rk))
    assert back.records[0].images == rk[0].images and back.records[0].ranks == rk[0].ranks
    assert np.isclose(len(back.pairs()), 3)
