"""prefscore.annotate: inputs, statistics, scheduling, the HTTP API, concurrency, restart, export,
and an end-to-end run in real headless Chromium (Debian's `chromium` driven by Playwright)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from scipy.stats import norm
from typer.testing import CliRunner

from prefscore.annotate import (
    AnnotationInputError,
    ExportOptions,
    SchedulerConfig,
    Store,
    create_app,
    export_pairs,
    leaderboard,
    load_candidates,
)
from prefscore.annotate.app import hosts_for
from prefscore.annotate.stats import fit_bradley_terry, krippendorff_alpha_nominal, order_uncertainty, wilson_interval
from prefscore.data import load_judgements

GENERATORS = ("gen-a", "gen-b", "gen-c")
QUALITY = {"gen-a": 0, "gen-b": 1, "gen-c": 2}  # simulated humans prefer higher


def make_images(root: Path, n_prompts: int = 3, generators=GENERATORS, metrics: bool = True) -> Path:
    """Tiny distinct PNGs and a candidates CSV (prompt, image, generator, two metric columns)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_prompts):
        for g, gen in enumerate(generators):
            name = f"img/p{p}_{gen}.png"
            Image.fromarray(np.full((6, 8, 3), (40 * p, 90 * g, 200), np.uint8)).save(root / name)
            row = {"prompt": f"prompt number {p}", "image": name, "generator": gen}
            if metrics:
                row["agrees"] = float(QUALITY[gen]) + 0.01 * p  # ranks like the simulated humans
                row["reverse"] = -float(QUALITY[gen])  # exactly the opposite
            rows.append(row)
    path = root / "candidates.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def make_store(tmp_path: Path, **cfg) -> Store:
    store = Store(tmp_path / "ann.sqlite", SchedulerConfig(**cfg))
    store.register(*load_candidates(make_images(tmp_path)))
    return store


def item_generators(store: Store) -> dict[str, str]:
    """Generator of each image, by the public id the API shows."""
    with store.read() as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT public_id, generator FROM items")}


def human_choice(pair: dict, gens: dict[str, str]) -> str:
    """The simulated annotator: picks the image of the better generator."""
    left, right = gens[pair["left"]["item_id"]], gens[pair["right"]["item_id"]]
    return "left" if QUALITY[left] > QUALITY[right] else "right"


def client_for(store: Store, name: str) -> TestClient:
    token = store.add_annotator(name)
    client = TestClient(create_app(store))
    assert client.post("/api/login", json={"token": token}).status_code == 200
    return client


# -- inputs -----------------------------------------------------------------------------------------

def test_table_input_paths_metrics_and_directions(tmp_path):
    path = make_images(tmp_path)
    cands, cols = load_candidates(path)
    assert len(cands) == 9
    assert [c.name for c in cols] == ["agrees", "reverse"] and all(c.higher_is_better for c in cols)
    assert cands[0].path == str((tmp_path / "img" / "p0_gen-a.png").resolve())
    assert cands[4].generator == "gen-b" and cands[4].metrics == {"agrees": 1.01, "reverse": -1.0}
    _, cols = load_candidates(path, metrics=["agrees"], lower_is_better=["agrees"])
    assert [(c.name, c.higher_is_better) for c in cols] == [("agrees", False)]
    _, cols = load_candidates(path, metrics=[])
    assert cols == []


def test_table_input_errors_name_file_and_row(tmp_path):
    path = make_images(tmp_path)
    text = path.read_text().replace("img/p1_gen-b.png", "img/missing.png")
    path.write_text(text)
    with pytest.raises(AnnotationInputError, match=r"candidates.csv row 6: image .*missing.png not found"):
        load_candidates(path)
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,picture\nx,y.png\n")
    with pytest.raises(AnnotationInputError, match=r"bad.csv: missing column\(s\) image"):
        load_candidates(bad)
    (tmp_path / "notimage.png").write_text("hello")
    bad.write_text("prompt,image\nx,notimage.png\n")
    with pytest.raises(AnnotationInputError, match="not a readable image"):
        load_candidates(bad)
    with pytest.raises(AnnotationInputError, match="not metric columns"):
        load_candidates(path.with_name("candidates.csv"), metrics=["agrees"], lower_is_better=["nope"])


def test_folder_input_with_prompt_file_and_prompt_txt(tmp_path):
    root = tmp_path / "gen"
    for pid, gens in (("0000", ("sdxl", "flux")), ("0001", ("sdxl", "flux", "dalle")), ("extra", ("a", "b"))):
        (root / pid).mkdir(parents=True)
        for g in gens:
            Image.new("RGB", (4, 4), (len(g) * 20, 0, 0)).save(root / pid / f"{g}.png")
    (root / "0001" / "notes.md").write_text("ignored")
    (root / "extra" / "prompt.txt").write_text("a prompt from prompt.txt\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue bird\n")
    cands, cols = load_candidates(root, prompts)
    assert cols == []
    assert [(c.prompt_key, c.generator, c.prompt) for c in cands] == [
        ("0000", "flux", "a red fox"), ("0000", "sdxl", "a red fox"),
        ("0001", "dalle", "a blue bird"), ("0001", "flux", "a blue bird"), ("0001", "sdxl", "a blue bird"),
        ("extra", "a", "a prompt from prompt.txt"), ("extra", "b", "a prompt from prompt.txt")]
    store = Store(tmp_path / "f.sqlite")
    assert store.register(cands) == (7, 1 + 3 + 1)
    assert store.register(cands) == (0, 0)  # idempotent
    (root / "0002").mkdir()
    Image.new("RGB", (4, 4)).save(root / "0002" / "x.png")
    with pytest.raises(AnnotationInputError, match=r"0002: no prompt for prompt id '0002'"):
        load_candidates(root, prompts)


# -- statistics -------------------------------------------------------------------------------------

def test_bradley_terry_two_players_matches_closed_form():
    # 7 wins of 10: MLE difference log(7/3), standard error 1/sqrt(n p (1-p)) (flat prior)
    first = np.zeros(10, int)
    second = np.ones(10, int)
    y = np.array([1.0] * 7 + [0.0] * 3)
    fit = fit_bradley_terry(2, first, second, y, prior_variance=1e9)
    diff = fit.strength[0] - fit.strength[1]
    assert diff == pytest.approx(math.log(7 / 3), abs=1e-6)
    assert fit.strength.sum() == pytest.approx(0.0, abs=1e-12)
    var_diff = fit.cov[0, 0] + fit.cov[1, 1] - 2 * fit.cov[0, 1]
    assert math.sqrt(var_diff) == pytest.approx(1 / math.sqrt(10 * 0.7 * 0.3), rel=1e-6)
    # ties are half wins: 5 ties + 5 wins ~ 7.5 of 10
    fit = fit_bradley_terry(2, first, second, np.array([0.5] * 5 + [1.0] * 5), prior_variance=1e9)
    assert fit.strength[0] - fit.strength[1] == pytest.approx(math.log(7.5 / 2.5), abs=1e-6)


def test_bradley_terry_recovers_strengths_and_interval_coverage():
    rng = np.random.default_rng(0)
    truth = np.array([-1.0, 0.0, 0.5, 1.5])
    truth -= truth.mean()
    first = rng.integers(0, 4, 4000)
    second = (first + rng.integers(1, 4, 4000)) % 4
    y = (rng.random(4000) < 1 / (1 + np.exp(-(truth[first] - truth[second])))).astype(float)
    fit = fit_bradley_terry(4, first, second, y)
    lo, hi = fit.interval()
    assert np.all((lo < truth) & (truth < hi))
    assert np.max(np.abs(fit.strength - truth)) < 0.15
    # all wins: finite thanks to the prior
    fit = fit_bradley_terry(2, np.zeros(5, int), np.ones(5, int), np.ones(5))
    assert np.all(np.isfinite(fit.strength)) and fit.strength[0] > 1
    # order uncertainty: 2 * Phi(-|d| / sd); 1 for an undecided pair, 0 within one generator
    fit = fit_bradley_terry(3, np.array([1, 1, 1, 2, 2, 2, 1, 1, 1]), np.array([0, 0, 0, 0, 0, 0, 2, 2, 2]),
                            np.array([1, 1, 1, 1, 1, 1, 0.5, 0.5, 0.5]))
    doubt = order_uncertainty(fit, np.array([0, 1, 0]), np.array([1, 2, 0]))
    d = fit.strength[0] - fit.strength[1]
    sd = math.sqrt(fit.cov[0, 0] + fit.cov[1, 1] - 2 * fit.cov[0, 1])
    assert doubt[0] == pytest.approx(2 * norm.cdf(-abs(d) / sd)) and 0.01 < doubt[0] < 0.2
    assert doubt[1] == pytest.approx(1.0) and doubt[2] == 0.0


def test_krippendorff_alpha_and_wilson():
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"], ["tie", "tie"]]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "b"]]) == pytest.approx(0.0)
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"], ["a", "b"]]) == pytest.approx(1 - 5 * 2 / 18)
    assert krippendorff_alpha_nominal([["a"], ["b"]]) is None
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))


# -- API --------------------------------------------------------------------------------------------

def test_api_annotate_all_pairs_undo_and_leaderboard(tmp_path):
    store = make_store(tmp_path)
    gens = item_generators(store)
    client = client_for(store, "alice")
    r = client.post("/api/next").json()
    assert r["progress"] == {"answered": 0, "repeats": 0, "remaining": 9, "total": 9, "covered": 0}
    assert set(r["pair"]) == {"assignment_id", "prompt", "left", "right"}  # no generator names leak to annotators
    assert client.post("/api/next").json()["pair"] == r["pair"]  # the pending pair is stable (reload, second tab)
    seen = []
    while not r["done"]:
        pair = r["pair"]
        seen.append(frozenset((pair["left"]["item_id"], pair["right"]["item_id"])))
        r = client.post("/api/answer", json={"assignment_id": pair["assignment_id"], "choice": human_choice(pair, gens)}).json()
    assert len(seen) == len(set(seen)) == 9  # every pair once, none twice
    assert r["progress"]["answered"] == 9 and r["progress"]["covered"] == 9
    # undo brings the last pair back; answering again replaces the answer
    undone = client.post("/api/undo").json()["pair"]
    assert frozenset((undone["left"]["item_id"], undone["right"]["item_id"])) == seen[-1]
    assert store.progress(1)["answered"] == 8
    r = client.post("/api/answer", json={"assignment_id": undone["assignment_id"], "choice": "tie"}).json()
    assert r["done"] and r["progress"]["answered"] == 9
    board = client.get("/api/leaderboard", headers={"Authorization": f"Bearer {store.leaderboard_token()}"}).json()
    assert [g["generator"] for g in board["generators"]] == ["gen-c", "gen-b", "gen-a"]
    top = board["generators"][0]
    assert top["ci_low"] < top["strength"] < top["ci_high"]
    assert sum(g["wins"] for g in board["generators"]) == 8 and board["counts"]["ties"] == 1
    metrics = {m["metric"]: m for m in board["metrics"]}
    assert metrics["agrees"]["agreement"] == 1.0 and metrics["agrees"]["pairs"] == 8
    assert metrics["reverse"]["agreement"] == 0.0
    assert metrics["agrees"]["generator_rank_spearman"] == pytest.approx(1.0)
    assert metrics["reverse"]["generator_rank_spearman"] == pytest.approx(-1.0)


def test_api_answer_mapping_idempotence_and_conflicts(tmp_path):
    store = make_store(tmp_path)
    client = client_for(store, "alice")
    pair = client.post("/api/next").json()["pair"]
    r = client.post("/api/answer", json={"assignment_id": pair["assignment_id"], "choice": "left"})
    assert r.status_code == 200
    row = store.judgement_rows()[0]
    left_path = store.image_path(pair["left"]["item_id"])
    assert (row["path_a"] if r.json()["label"] == "a" else row["path_b"]) == left_path  # "left" -> the left image won
    again = client.post("/api/answer", json={"assignment_id": pair["assignment_id"], "choice": "left"})
    assert again.status_code == 200 and again.json()["duplicate"] is True  # a double click is harmless
    changed = client.post("/api/answer", json={"assignment_id": pair["assignment_id"], "choice": "right"})
    assert changed.status_code == 409 and "undo" in changed.json()["detail"]
    assert len(store.judgement_rows()) == 1
    assert client.post("/api/answer", json={"assignment_id": 999, "choice": "left"}).status_code == 404
    assert client.post("/api/answer", json={"assignment_id": pair["assignment_id"], "choice": "maybe"}).status_code == 422
    assert client.post("/api/answer", json={"assignment_id": "x; DROP TABLE", "choice": "left"}).status_code == 422
    assert client.post("/api/answer", json={"assignment_id": 1, "choice": "left", "extra": 1}).status_code == 422
    bob = client_for(store, "bob")  # someone else's assignment is not yours
    assert bob.post("/api/answer", json={"assignment_id": pair["assignment_id"], "choice": "left"}).status_code == 404
    assert client.post("/api/undo").status_code == 200
    assert client.post("/api/undo").status_code == 409  # nothing left to undo


def test_api_auth_csrf_and_image_serving(tmp_path):
    store = make_store(tmp_path)
    token = store.add_annotator("alice")
    anon = TestClient(create_app(store, allowed_hosts=["testserver"]))
    assert anon.post("/api/next").status_code == 401
    assert anon.post("/api/answer", json={"assignment_id": 1, "choice": "left"}).status_code == 401
    assert anon.post("/api/undo").status_code == 401
    assert anon.get("/api/image/1").status_code == 401
    assert anon.post("/api/login", json={"token": "wrong-token-wrong-token"}).status_code == 401
    assert anon.get("/api/leaderboard").status_code == 401  # the leaderboard has its own token
    bearer = {"Authorization": f"Bearer {token}"}
    assert anon.post("/api/next", headers=bearer).status_code == 200
    # writes must be JSON from this origin
    assert anon.post("/api/login", data={"token": token}).status_code == 415
    assert anon.post("/api/login", content=json.dumps({"token": token}), headers={"Content-Type": "text/plain"}).status_code == 415
    assert anon.post("/api/login", json={"token": token}, headers={"Origin": "http://evil.example"}).status_code == 403
    assert anon.post("/api/next", headers={**bearer, "Host": "evil.example"}).status_code == 400  # DNS rebinding
    loopback = TestClient(create_app(store, allowed_hosts=hosts_for("::1")))
    assert loopback.get("/api/health", headers={"Host": "[::1]:8000"}).status_code == 200
    assert loopback.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200
    assert loopback.get("/api/health", headers={"Host": "127.0.0.1.evil.example"}).status_code == 400
    # images: by registered id only
    first = next(iter(item_generators(store)))
    img = anon.get(f"/api/image/{first}", headers=bearer)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content == Path(store.image_path(first)).read_bytes()
    assert anon.get("/api/image/999", headers=bearer).status_code == 404
    for evil in ("/api/image/..%2F..%2Fetc%2Fpasswd", "/api/image/-1%20OR%201=1", "/api/image/%2Fetc%2Fpasswd"):
        assert anon.get(evil, headers=bearer).status_code in (404, 422)
    # revoked tokens stop working at once
    store.set_active("alice", False)
    assert anon.post("/api/next", headers=bearer).status_code == 401
    page = anon.get("/")
    assert page.status_code == 200 and "script-src 'sha256-" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page.text) is None  # no CDN: nothing loaded from elsewhere


def test_scheduling_coverage_first_across_annotators(tmp_path):
    store = make_store(tmp_path)
    ids = [store.add_annotator(n) for n in ("u1", "u2", "u3")]
    annotators = [store.authenticate(t) for t in ids]
    shown = []
    for _round in range(3):  # three annotators in turn, each with a pending pair: 9 distinct pairs
        for who in annotators:
            pair = store.next_assignment(who.id)
            shown.append(pair)
            store.answer(who.id, pair["assignment_id"], "left")
    keys = [frozenset((p["left"]["item_id"], p["right"]["item_id"])) for p in shown]
    assert len(set(keys)) == 9  # no pair got a second vote before every pair had one
    with store.read() as conn:
        reasons = Counter(r[0] for r in conn.execute("SELECT reason FROM assignments"))
    assert reasons == {"coverage": 9}
    nxt = store.next_assignment(annotators[0].id)  # every pair covered: active choice now
    with store.read() as conn:
        assert conn.execute("SELECT reason FROM assignments WHERE id=?", (nxt["assignment_id"],)).fetchone()[0] == "active"


def test_scheduling_active_prefers_metric_disagreement(tmp_path):
    rows = [{"prompt": "p", "image": f"{g}.png", "generator": g, "m1": m1, "m2": m2}
            for g, m1, m2 in (("x", 1.0, 1.0), ("y", 2.0, 2.0), ("z", 3.0, 0.0))]
    for r in rows:
        Image.new("RGB", (4, 4)).save(tmp_path / r["image"])
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = Store(tmp_path / "s.sqlite", SchedulerConfig(min_votes=0, bt_weight=0.0))
    store.register(*load_candidates(path))
    who = store.authenticate(store.add_annotator("u"))
    gens = item_generators(store)
    order = []
    for _ in range(3):
        p = store.next_assignment(who.id)
        order.append(frozenset((gens[p["left"]["item_id"]], gens[p["right"]["item_id"]])))
        store.answer(who.id, p["assignment_id"], "skip")
    # m1 and m2 agree on x<y; they disagree on (x, z) and (y, z): those come first
    assert order[2] == frozenset(("x", "y"))
    assert store.next_assignment(who.id) is None


def test_scheduling_active_prefers_uncertain_bt_pairs(tmp_path):
    store = make_store(tmp_path, min_votes=1, metric_weight=0.0)
    gens = item_generators(store)
    w = store.authenticate(store.add_annotator("warmup"))
    for _ in range(9):  # one vote per pair: gen-a loses everything, gen-b vs gen-c split
        p = store.next_assignment(w.id)
        pair_gens = {gens[p["left"]["item_id"]], gens[p["right"]["item_id"]]}
        if "gen-a" in pair_gens:
            choice = "right" if gens[p["left"]["item_id"]] == "gen-a" else "left"
        else:
            choice = "tie"
        store.answer(w.id, p["assignment_id"], choice)
    u = store.authenticate(store.add_annotator("active"))
    p = store.next_assignment(u.id)
    assert {gens[p["left"]["item_id"]], gens[p["right"]["item_id"]]} == {"gen-b", "gen-c"}


def test_repeat_consistency_checks(tmp_path):
    store = make_store(tmp_path, repeat_rate=0.9, repeat_gap=2)
    gens = item_generators(store)
    client = client_for(store, "alice")
    r = client.post("/api/next").json()
    first_sides, repeats = {}, []
    for _ in range(40):
        if r["done"]:
            break
        pair = r["pair"]
        key = frozenset((pair["left"]["item_id"], pair["right"]["item_id"]))
        if key in first_sides:
            repeats.append(key)
            assert first_sides[key] == (pair["right"]["item_id"], pair["left"]["item_id"])  # sides swapped
        else:
            first_sides[key] = (pair["left"]["item_id"], pair["right"]["item_id"])
        r = client.post("/api/answer", json={"assignment_id": pair["assignment_id"], "choice": human_choice(pair, gens)}).json()
    assert r["done"] and len(first_sides) == 9
    assert 1 <= len(repeats) == len(set(repeats)) <= 9  # each pair repeated at most once
    board = leaderboard(store)
    alice = board["annotators"][0]
    assert alice["repeats"] == len(repeats) and alice["self_consistency"] == 1.0 and alice["answers"] == 9
    assert board["counts"]["repeats"] == len(repeats)
    assert export_pairs(store, tmp_path / "out.csv") == 9  # repeats are not exported by default
    assert export_pairs(store, tmp_path / "all.csv", ExportOptions(repeats=True)) == 9 + len(repeats)


def test_inter_annotator_agreement(tmp_path):
    store = make_store(tmp_path)
    gens = item_generators(store)
    people = {n: store.authenticate(store.add_annotator(n)) for n in ("ann", "ben", "cat")}
    for name, who in people.items():
        while (p := store.next_assignment(who.id)) is not None:
            choice = human_choice(p, gens)
            if name == "cat":  # cat always picks the worse image
                choice = "left" if choice == "right" else "right"
            store.answer(who.id, p["assignment_id"], choice)
    board = leaderboard(store)
    by = {a["annotator"]: a for a in board["annotators"]}
    assert by["ann"]["agreement_with_others"] == pytest.approx(0.5)  # agrees with ben, never with cat
    assert by["cat"]["agreement_with_others"] == 0.0 and by["cat"]["shared_judgements"] == 18
    assert board["agreement"]["pairwise"] == pytest.approx(1 / 3)
    assert board["agreement"]["annotator_pairs"] == 27
    # 9 units (x, x, y), x the right label: o_xx = o_xy = o_yx = 1 per unit. Items were registered gen-a,
    # gen-b, gen-c, so image_a is always the worse one and x = "b" everywhere: n_b = 18, n_a = 9, n = 27,
    # alpha = 1 - (n - 1) * (o_ab + o_ba) / (2 n_a n_b) = 1 - 26 * 18 / (2 * 9 * 18), worse than chance.
    assert board["agreement"]["krippendorff_alpha"] == pytest.approx(1 - 26 * 18 / (2 * 9 * 18), abs=1e-6)
    assert board["counts"]["pairs_multi_annotated"] == 9


# -- export -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_export_is_read_by_prefscore_data(tmp_path, suffix):
    store = make_store(tmp_path)
    gens = item_generators(store)
    people = [store.authenticate(store.add_annotator(n)) for n in ("ann", "ben")]
    for k, who in enumerate(people):
        for i in range(5):
            p = store.next_assignment(who.id)
            choice = "tie" if (k, i) == (1, 0) else "skip" if (k, i) == (1, 1) else human_choice(p, gens)
            store.answer(who.id, p["assignment_id"], choice)
    out = tmp_path / "export" / f"pairs{suffix}"
    assert export_pairs(store, out) == 9  # 10 answers, one skipped
    data = load_judgements(out)  # what `prefscore train` / `evaluate` read; it checks every image exists
    assert data.kind == "pairs" and len(data) == 9
    by_path = {str((tmp_path / "img" / f"p{p}_{g}.png").resolve()): g for p in range(3) for g in GENERATORS}
    labels = Counter()
    for rec in data.records:
        ga, gb = by_path[str(Path(rec.image_a).resolve())], by_path[str(Path(rec.image_b).resolve())]
        expected = "a" if QUALITY[ga] > QUALITY[gb] else "b"
        assert rec.label in (expected, "tie")
        labels[rec.label] += 1
        assert rec.prompt.startswith("prompt number")
    assert labels["tie"] == 1
    if suffix == ".csv":
        rows = list(csv.DictReader(open(out)))
        assert {"annotator", "generator_a", "generator_b", "timestamp"} <= set(rows[0])
        assert rows[0]["image_a"].startswith("../img/")  # relative to the export file
        # `prefscore evaluate` reads it, with the input's metric scores as inline columns NAME_a / NAME_b
        from prefscore.evaluation import EvalConfig, evaluate

        table = evaluate(out, score_columns=["agrees", "reverse"], config=EvalConfig(n_boot=0)).table
        acc = {m: float(table[(table.metric == m) & (table.statistic == "accuracy")].estimate.iloc[0]) for m in ("agrees", "reverse")}
        assert acc == {"agrees": 1.0, "reverse": 0.0}  # ties are left out of plain accuracy
    # one row per pair by majority
    n = export_pairs(store, tmp_path / f"maj{suffix}", ExportOptions(aggregate="majority", ties=False))
    assert n == len(load_judgements(tmp_path / f"maj{suffix}")) == len({r["pair_id"] for r in store.judgement_rows() if r["label"] not in ("skip", "tie")})


# -- durability and concurrency ----------------------------------------------------------------------

def test_restart_loses_nothing(tmp_path):
    store = make_store(tmp_path)
    client = client_for(store, "alice")
    answered = []
    for _ in range(4):
        p = client.post("/api/next").json()["pair"]
        client.post("/api/answer", json={"assignment_id": p["assignment_id"], "choice": "left"})
        answered.append(p["assignment_id"])
    pending = client.post("/api/next").json()["pair"]
    before = store.judgement_rows()
    del client, store
    reopened = Store(tmp_path / "ann.sqlite")  # as after a server restart
    assert reopened.judgement_rows() == before and len(before) == 4
    again = TestClient(create_app(reopened))  # the cookie was dropped too: log in again
    assert again.post("/api/login", json={"token": "x" * 20}).status_code == 401
    with sqlite3.connect(tmp_path / "ann.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    token = reopened.reset_token("alice")
    again.post("/api/login", json={"token": token})
    assert again.post("/api/next").json()["pair"] == pending  # the same pair is still waiting


def test_concurrent_annotators_over_http(tmp_path):
    """6 writer threads (4 annotators, one of them on 3 tabs at once) against a real server."""
    store = make_store(tmp_path, min_votes=2)
    gens = item_generators(store)
    tokens = {n: store.add_annotator(n) for n in ("w1", "w2", "w3", "w4")}
    errors, statuses, undos = [], Counter(), Counter()
    lock = threading.Lock()

    def worker(name: str, n_steps: int, undo_every: int):
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens[name]}"}, timeout=30) as http:
                for step in range(n_steps):
                    r = http.post("/api/next")
                    with lock:
                        statuses[r.status_code] += 1
                    data = r.json()
                    if data["done"]:
                        break
                    a = http.post("/api/answer", json={"assignment_id": data["pair"]["assignment_id"], "choice": human_choice(data["pair"], gens)})
                    with lock:
                        statuses[a.status_code] += 1
                    if undo_every and step % undo_every == undo_every - 1:
                        u = http.post("/api/undo")
                        with lock:
                            statuses[u.status_code] += 1
                            undos[u.status_code] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    with live_server(store) as base:
        threads = [threading.Thread(target=worker, args=(n, 20 if n == "w2" else 12, 4 if n == "w2" else 0)) for n in ("w1", "w2", "w3")]
        threads += [threading.Thread(target=worker, args=("w4", 12, 0)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert set(statuses) <= {200, 409}, statuses  # 409 only: w4's tabs answering the same pair differently / too late
    rows = store.judgement_rows()
    firsts = Counter((r["annotator"], r["pair_id"]) for r in rows if not r["is_repeat"])
    assert max(firsts.values()) == 1  # no pair answered twice by one person, even from 3 tabs at once
    per = Counter(r["annotator"] for r in rows)
    assert per["w1"] == per["w3"] == per["w4"] == 9  # everyone finished every pair
    assert per["w2"] == 9
    with store.read() as conn:
        assert undos[200] >= 2 and set(undos) == {200}
        assert conn.execute("SELECT COUNT(*) FROM judgements WHERE undone_at IS NOT NULL").fetchone()[0] == undos[200]
        assert conn.execute("SELECT COUNT(*) FROM assignments a WHERE status='answered' AND NOT EXISTS "
                            "(SELECT 1 FROM judgements j WHERE j.assignment_id=a.id AND j.undone_at IS NULL)").fetchone()[0] == 0
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_concurrent_store_writers_lose_nothing(tmp_path):
    store = make_store(tmp_path)
    people = [store.authenticate(store.add_annotator(f"t{i}")) for i in range(5)]
    barrier = threading.Barrier(len(people))
    errors = []

    def worker(who):
        try:
            own = Store(tmp_path / "ann.sqlite")  # a separate Store, as another server process would have
            barrier.wait()
            while (p := own.next_assignment(who.id)) is not None:
                own.answer(who.id, p["assignment_id"], "tie")
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(w,)) for w in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert Counter(r["annotator"] for r in store.judgement_rows()) == {f"t{i}": 9 for i in range(5)}


# -- CLI --------------------------------------------------------------------------------------------

def test_cli_annotators_report_and_export(tmp_path):
    import typer

    from prefscore.annotate.cli import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root():  # a group, like the real `prefscore` app
        pass

    runner = CliRunner()
    db = tmp_path / "a.sqlite"
    store = Store(db)
    store.register(*load_candidates(make_images(tmp_path)))
    res = runner.invoke(app, ["annotate", "add-annotator", "dana", "--db", str(db), "--url", "http://127.0.0.1:9999"])
    assert res.exit_code == 0, res.output
    token = res.output.split("token: ")[1].split()[0]
    assert f"http://127.0.0.1:9999/?token={token}" in res.output
    who = store.authenticate(token)
    assert who.name == "dana"
    for _ in range(3):
        p = store.next_assignment(who.id)
        store.answer(who.id, p["assignment_id"], "left")
    res = runner.invoke(app, ["annotate", "list-annotators", "--db", str(db)])
    assert res.exit_code == 0 and "dana" in res.output and "3" in res.output
    res = runner.invoke(app, ["annotate", "report", "--db", str(db), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["counts"]["answers"] == 3
    res = runner.invoke(app, ["annotate", "report", "--db", str(db)])
    assert res.exit_code == 0 and "Bradley-Terry" in res.output and "gen-c" in res.output
    out = tmp_path / "p.jsonl"
    res = runner.invoke(app, ["annotate", "export", "--db", str(db), "-o", str(out)])
    assert res.exit_code == 0 and "wrote 3 pairs" in res.output
    assert len(load_judgements(out)) == 3
    res = runner.invoke(app, ["annotate", "revoke-annotator", "dana", "--db", str(db)])
    assert res.exit_code == 0 and store.authenticate(token) is None
    res = runner.invoke(app, ["annotate", "add-annotator", "dana", "--db", str(db)])
    assert res.exit_code == 1 and "already exists" in res.output
    res = runner.invoke(app, ["annotate", "export", "--db", str(tmp_path / "none.sqlite"), "-o", str(out)])
    assert res.exit_code == 1 and "no such annotation database" in res.output
    res = runner.invoke(app, ["annotate", "serve", "--db", str(tmp_path / "empty.sqlite"), "--port", "1", "--create"])
    assert res.exit_code == 1 and "no pairs to annotate" in res.output


# -- a real server and a real browser ---------------------------------------------------------------

class live_server:
    """uvicorn serving ``create_app(store)`` in a thread on a free 127.0.0.1 port; yields the base URL."""

    def __init__(self, store: Store):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(create_app(store, allowed_hosts=hosts_for("127.0.0.1")), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]


def _browser_or_fail():
    """Debian's chromium + Playwright's Python package. Missing ones fail under CI (or with
    PREFSCORE_REQUIRE_BROWSER=1) and are a visible skip elsewhere: .ci/run installs both."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the Python package playwright (pip install playwright)")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI") or os.environ.get("PREFSCORE_REQUIRE_BROWSER") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def test_browser_end_to_end(tmp_path):
    _browser_or_fail()
    from playwright.sync_api import expect, sync_playwright

    store = make_store(tmp_path)
    gens = item_generators(store)
    token = store.add_annotator("eve")
    shown: list[tuple[str, str, str]] = []  # (left id, right id, what we answered)

    with live_server(store) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            remote = []
            page.on("request", lambda req: remote.append(req.url) if not req.url.startswith(base) else None)
            page.goto(f"{base}/?token={token}")
            expect(page.locator("#who")).to_have_text("Signed in as eve")
            assert "token" not in page.url  # removed from the address bar and history

            def current() -> tuple[str, str]:
                expect(page.get_by_role("button", name="Left image is better")).to_be_enabled()  # both images loaded
                ids = [page.locator(sel).get_attribute("src").rsplit("/", 1)[1] for sel in ("#img-left", "#img-right")]
                return ids[0], ids[1]

            def progress_is(n: int):
                expect(page.locator("#progress-text")).to_contain_text(f"{n} of 9 pairs answered")

            left, right = current()
            page.keyboard.press("ArrowLeft")
            shown.append((left, right, "left"))
            progress_is(1)
            left, right = current()
            page.get_by_role("button", name="Right image is better").click()
            shown.append((left, right, "right"))
            progress_is(2)
            left, right = current()
            page.keyboard.press("2")  # tie
            shown.append((left, right, "tie"))
            progress_is(3)
            left, right = current()
            page.keyboard.press("s")  # skip
            progress_is(4)
            page.keyboard.press("u")  # undo the skip: the same pair comes back
            progress_is(3)
            assert current() == (left, right)
            expect(page.locator("#status")).to_contain_text("undone")
            page.get_by_role("button", name="Left image is better").click()
            shown.append((left, right, "left"))
            progress_is(4)
            left, right = current()
            page.keyboard.press("ArrowRight")
            shown.append((left, right, "right"))
            progress_is(5)

            page.goto(f"{base}/leaderboard?token={store.leaderboard_token()}")
            expect(page.locator("#generators tbody tr")).to_have_count(3)
            expect(page.locator("#summary")).to_contain_text("5")
            expect(page.locator("#annotators tbody")).to_contain_text("eve")
            assert remote == []  # nothing but the local server was contacted
        finally:
            browser.close()

    out = tmp_path / "pairs.csv"
    assert export_pairs(store, out) == 5
    data = load_judgements(out)
    paths = {i: store.image_path(i) for i in gens}
    got = {frozenset((str(Path(r.image_a).resolve()), str(Path(r.image_b).resolve()))): r for r in data.records}
    for left, right, answer in shown:
        rec = got[frozenset((paths[left], paths[right]))]
        if answer == "tie":
            assert rec.label == "tie"
        else:
            winner = paths[left] if answer == "left" else paths[right]
            assert str(Path(rec.image_a if rec.label == "a" else rec.image_b).resolve()) == winner
    assert len(got) == 5
