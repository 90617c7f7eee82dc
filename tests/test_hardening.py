"""Issue 16 part B: nothing lost, nothing run that shouldn't be.

Intervals and p-values never claim more certainty than the resampling units support; user-supplied
files never run code when loaded; judgement files reject self-pairs and report duplicates; corrupt
model files and missing models give messages, not tracebacks.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from prefscore.evaluation import EvalConfig, evaluate, min_units, p_value_floor, paired_test


# -- 6. too few resampling units -------------------------------------------------------------------


def _pairs(path, prompts, n_per_prompt, seed=0, noise=0.8):
    """Pairs with inline scores ``good`` (mostly right) and ``bad`` (mostly wrong); the first pair of each
    prompt is ordered right by ``good`` and wrong by ``bad``."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in prompts:
        for k in range(n_per_prompt):
            g = rng.normal(size=2)
            noisy = g + (noise * rng.normal(size=2) if k else 0.0)
            rows.append({"prompt": p, "image_a": f"{p}-{k}-a.png", "image_b": f"{p}-{k}-b.png",
                         "label": "a" if g[0] > g[1] else "b", "good_a": noisy[0], "good_b": noisy[1],
                         "bad_a": -noisy[0], "bad_b": -noisy[1]})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_min_units_rule():
    # the fewest G with 2^(1-G) <= 1 - level: 5 at 90%, 6 at 95%, 8 at 99%
    assert min_units(0.95) == 6 and min_units(0.99) == 8 and min_units(0.9) == 5 and min_units(0.5) == 2
    assert p_value_floor(1) == 1.0 and p_value_floor(6) == pytest.approx(1 / 32)
    # all 50 replicates favour a, but 3 units cannot support p < 0.25
    t = paired_test(1.0, 0.0, np.ones(50), np.zeros(50), n_units=3)
    assert t.p_value == pytest.approx(0.25)


def test_one_prompt_two_pairs_gives_no_interval_and_no_p_value(tmp_path):
    path = _pairs(tmp_path / "one.csv", ["a fox"], 2, noise=0.0)
    res = evaluate(path, score_columns=["good", "bad"], config=EvalConfig(n_boot=500))
    acc = res.get("good", "accuracy")
    assert acc.estimate == 1.0 and math.isnan(acc.low) and math.isnan(acc.high)
    row = res.table[(res.table.metric == "good") & (res.table.statistic == "accuracy")].iloc[0]
    assert row.units == 1 and row.resampled == "" and row.resampled_units == 0
    t = res.tests[res.tests.statistic == "accuracy"].iloc[0]
    assert t.difference == 1.0 and math.isnan(t.p_value) and math.isnan(t.low)
    assert res.settings["resampling"]["resampled"] is None
    assert any("no bootstrap intervals or p-values: only 1 prompt, fewer than 6; only 2 records" in n for n in res.notes)
    d = res.to_dict()
    assert d["tests"][0]["p_value"] is None and d["agreement"][0]["low"] is None


def test_one_prompt_many_pairs_falls_back_to_records_and_says_so(tmp_path):
    path = _pairs(tmp_path / "one.csv", ["a fox"], 40)
    res = evaluate(path, score_columns=["good", "bad"], config=EvalConfig(n_boot=300))
    acc = res.get("good", "accuracy")
    assert acc.low < acc.high  # records resampled: a real, non-degenerate interval
    row = res.table[(res.table.metric == "good") & (res.table.statistic == "accuracy")].iloc[0]
    assert row.units == 1 and row.resampled == "record" and row.resampled_units == 40
    t = res.tests[res.tests.statistic == "accuracy"].iloc[0]
    assert t.resampled == "record" and t.p_value >= p_value_floor(40)
    assert res.settings["resampling"]["fallback"] is True
    assert any(n.startswith("bootstrap intervals and p-values resample records, not prompts: only 1 prompt") for n in res.notes)


def test_enough_prompts_resample_prompts(tmp_path):
    path = _pairs(tmp_path / "many.csv", [f"p{i}" for i in range(8)], 3)
    res = evaluate(path, score_columns=["good", "bad"], config=EvalConfig(n_boot=300))
    row = res.table[(res.table.metric == "good") & (res.table.statistic == "accuracy")].iloc[0]
    assert row.resampled == "prompt" and row.resampled_units == 8
    t = res.tests[res.tests.statistic == "accuracy"].iloc[0]
    assert t.p_value >= p_value_floor(8)  # 8 prompts all favouring "good": p = 2^-7, not 2/(B+1)
    assert t.p_value == pytest.approx(p_value_floor(8))


def test_cli_and_report_say_not_available(tmp_path):
    from prefscore.cli import app

    path = _pairs(tmp_path / "one.csv", ["a fox"], 2, noise=0.0)
    out = tmp_path / "res"
    r = CliRunner().invoke(app, ["evaluate", str(path), "-c", "good,bad", "-o", str(out), "--bootstrap", "200"])
    assert r.exit_code == 0, r.output
    assert "CI n/a" in r.output and "n/a" in r.output and "0.0020" not in r.output
    html = (out / "report.html").read_text()
    assert "CI n/a" in html and "only 1 prompt, fewer than 6" in html
    saved = json.loads((out / "agreement.json").read_text())
    assert saved["settings"]["resampling"]["description"].startswith("n/a (only 1 prompt")
    assert all(t["p_value"] is None for t in saved["tests"])


def test_training_validation_ci_needs_enough_units():
    from prefscore.training.report import PairOutcome, accuracy_ci_text, bootstrap_accuracy_ci

    def outcome(n, groups):
        rng = np.random.default_rng(1)
        a, b = rng.normal(size=n), rng.normal(size=n)
        target = np.where(a + 0.8 * rng.normal(size=n) > b, 1.0, 0.0)
        return PairOutcome(a, b, target, np.asarray(groups))

    lo, hi, how = bootstrap_accuracy_ci(outcome(2, ["p", "p"]), reps=200)
    assert math.isnan(lo) and math.isnan(hi) and how == "n/a (only 1 prompt, fewer than 6; only 2 pairs)"
    assert accuracy_ci_text({"pairwise_accuracy_ci": [lo, hi], "pairwise_accuracy_ci_resampled": how}) == \
        "95% CI n/a (only 1 prompt, fewer than 6; only 2 pairs)"
    lo, hi, how = bootstrap_accuracy_ci(outcome(60, ["p"] * 60), reps=200)
    assert lo < hi and how == "pairs (fallback: only 1 prompt, fewer than 6)"
    lo, hi, how = bootstrap_accuracy_ci(outcome(60, [f"p{i % 10}" for i in range(60)]), reps=200)
    assert lo < hi and how == "prompts"


# -- 7. no code runs from a planted file -----------------------------------------------------------


class _Planted:
    """Unpickling this runs ``open(marker, "w")`` (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker, legacy: bool):
    import pickle

    import torch

    payload = {"model": {"w": torch.zeros(2)}, "step": 1, "evil": _Planted(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:  # a plain pickle stream, not torch's zip format
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, str(path))
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_read_state_dict_refuses_code(tmp_path, legacy):
    from prefscore.backbones.clip import read_state_dict
    from prefscore.errors import CheckpointError

    marker = tmp_path / "pwned"
    path = _plant(tmp_path / "ckpt.pt", marker, legacy)
    with pytest.raises(CheckpointError, match="refused to load: the file holds Python objects other than tensors"):
        read_state_dict(path)
    assert not marker.exists()


def test_read_state_dict_still_reads_torchscript_and_plain_weights(tmp_path):
    import torch

    from prefscore.backbones.clip import read_state_dict

    lin = torch.nn.Linear(3, 2)
    torch.jit.save(torch.jit.script(lin), str(tmp_path / "scripted.pt"))  # the OpenAI release format
    torch.save(lin.state_dict(), str(tmp_path / "plain.pt"))
    for name in ("scripted.pt", "plain.pt"):
        sd = read_state_dict(tmp_path / name)
        assert torch.equal(sd["weight"], lin.weight) and torch.equal(sd["bias"], lin.bias)


def test_metric_with_a_planted_head_is_refused(tmp_path):
    """``prefscore.load`` of a model directory whose head file would run code."""
    import shutil

    import prefscore
    from prefscore.errors import CheckpointError

    from conftest import shared_fixture

    model = tmp_path / "model"
    shutil.copytree(shared_fixture("laion-aesthetic") / "model", model)
    marker = tmp_path / "pwned"
    _plant(model / "aesthetic-mlp.pth", marker, legacy=False)
    with pytest.raises(CheckpointError, match="aesthetic-mlp.pth: refused to load"):
        prefscore.load("laion-aesthetic", model=model)
    assert not marker.exists()


def test_train_finetune_resume_refuses_a_planted_checkpoint(tmp_path):
    from test_training_finetune import _tiny_clip

    from prefscore.errors import CheckpointError
    from prefscore.training import FinetuneConfig, TrainConfig, train
    from prefscore.training.synthetic import make_pairs

    clip = _tiny_clip(tmp_path / "clip", seed=0)
    pairs = make_pairs(tmp_path / "pairs", n_scenes=3, pairs_per_scene=2, seed=3)
    marker = tmp_path / "pwned"
    _plant(tmp_path / "out" / "checkpoints" / "step-0000009.pt", marker, legacy=False)
    config = TrainConfig(backbone=str(clip), val_fraction=0.34, seed=0, bootstrap=0,
                         finetune=FinetuneConfig(max_steps=1, batch_size=2, grad_accum=1))
    with pytest.raises(CheckpointError, match="step-0000009.pt: refused to load"):
        train(pairs.path, tmp_path / "out", config)
    assert not marker.exists()


def test_generation_resume_refuses_a_planted_state_file(tmp_path):
    from prefscore.errors import CheckpointError
    from prefscore.generation.finetune import STATE_FILE, RewardFinetuner

    marker = tmp_path / "pwned"
    _plant(tmp_path / "step-000001" / STATE_FILE, marker, legacy=True)
    # the state file is read before anything else of the run is touched, so no pipeline is needed here
    with pytest.raises(CheckpointError, match="refused to load"):
        RewardFinetuner.load_checkpoint(object(), tmp_path / "step-000001")
    assert not marker.exists()


# -- 10b. judgement files: self-pairs and duplicate rows ------------------------------------------


def _images(root, names):
    from PIL import Image

    for n in names:
        Image.new("RGB", (4, 4), (len(n) * 20 % 255, 0, 0)).save(root / n)


def test_a_pair_of_an_image_with_itself_is_rejected(tmp_path):
    from prefscore.data import DataError, load_judgements

    _images(tmp_path, ["x.png", "y.png"])
    (tmp_path / "p.csv").write_text("prompt,image_a,image_b,label\nfox,x.png,y.png,a\nfox,x.png,./x.png,b\n")
    with pytest.raises(DataError, match=r"p.csv, line 3: image_a and image_b are the same image \(x.png and ./x.png\)"):
        load_judgements(tmp_path / "p.csv")
    (tmp_path / "r.csv").write_text('prompt,images,ranks\nfox,"[""x.png"", ""y.png"", ""x.png""]","[1, 2, 3]"\n')
    with pytest.raises(DataError, match=r"r.csv, line 2: the ranking lists the same image more than once \(x.png\)"):
        load_judgements(tmp_path / "r.csv")


def test_duplicate_rows_are_counted_and_named(tmp_path):
    from prefscore.data import DuplicateRowsWarning, load_judgements

    _images(tmp_path, ["x.png", "y.png", "z.png"])
    (tmp_path / "p.csv").write_text("prompt,image_a,image_b,label\nfox,x.png,y.png,a\nfox,y.png,z.png,b\n"
                                    "fox,x.png,y.png,a\nfox,x.png,y.png,a\nfox,x.png,y.png,b\n")
    with pytest.warns(DuplicateRowsWarning, match=r"2 row\(s\) identical to an earlier row, each counted again .*"
                                                  r"p.csv, line 4 repeats p.csv, line 2; p.csv, line 5 repeats p.csv, line 2"):
        data = load_judgements(tmp_path / "p.csv")
    assert len(data) == 5  # kept: a repeated judgement may be real, but it is never silent
    res = evaluate(tmp_path / "p.csv", score_columns=None, scores=_score_file(tmp_path), config=EvalConfig(n_boot=0))
    assert any("2 row(s) identical to an earlier row" in n for n in res.notes)


def _score_file(root):
    pd.DataFrame({"image": [str(root / n) for n in ("x.png", "y.png", "z.png")], "prompt": ["fox"] * 3,
                  "s": [3.0, 2.0, 1.0]}).to_csv(root / "scores.csv", index=False)
    return root / "scores.csv"


# -- 13b. corrupt model files and missing models: messages, not tracebacks -------------------------


@pytest.mark.parametrize("name,content,message", [
    ("model.safetensors", b"garbage" * 10, r"model.safetensors: not a readable safetensors file .*corrupt or truncated"),
    ("model.safetensors", "half", r"model.safetensors: not a readable safetensors file .*corrupt or truncated"),
    ("config.json", b"{not json", r"config.json: the config.json is not valid JSON .*corrupt or truncated"),
    ("preprocessor_config.json", b"[1, 2", r"preprocessor_config.json: the preprocessor_config.json is not valid JSON"),
])
def test_corrupt_files_of_an_hf_model_directory_are_named(tmp_path, name, content, message):
    import shutil

    import prefscore
    from prefscore.errors import CheckpointError

    from conftest import shared_fixture

    model = tmp_path / "model"
    shutil.copytree(shared_fixture("clip-iqa") / "model", model)
    data = (model / name).read_bytes()
    (model / name).write_bytes(data[: len(data) // 2] if content == "half" else content)
    with pytest.raises(CheckpointError, match=message):
        prefscore.load("clip-iqa", model=model).score([np.zeros((8, 8, 3), np.uint8)])


def test_corrupt_files_of_a_trained_model_directory_are_named(tmp_path):
    import shutil

    import prefscore
    from prefscore.errors import CheckpointError
    from prefscore.training import HeadConfig, TrainConfig, train
    from prefscore.training.synthetic import make_pairs

    pairs = make_pairs(tmp_path / "pairs", n_scenes=4, pairs_per_scene=2, seed=1)
    train(pairs.path, tmp_path / "m", TrainConfig(backbone="stats", head=HeadConfig("linear"), val_fraction=0.25,
                                                  max_epochs=2, bootstrap=0))
    shutil.copytree(tmp_path / "m", tmp_path / "bad-card")
    (tmp_path / "bad-card" / "prefscore.json").write_text('{"format": ')
    with pytest.raises(CheckpointError, match=r"bad-card/prefscore.json: the model description is not valid JSON"):
        prefscore.load(tmp_path / "bad-card")
    shutil.copytree(tmp_path / "m", tmp_path / "bad-head")
    (tmp_path / "bad-head" / "head.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"bad-head/head.safetensors: not a readable safetensors file"):
        prefscore.load(tmp_path / "bad-head")


def test_generate_and_finetune_without_a_usable_model_say_why(tmp_path):
    from prefscore.cli import app

    from conftest import shared_fixture

    (tmp_path / "p.txt").write_text("a fox\n")
    (tmp_path / "empty").mkdir()
    model = str(shared_fixture("laion-aesthetic") / "model")
    runner = CliRunner()
    gen = ["generate", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out")]
    fin = ["finetune", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "run"), "--train-steps", "1"]
    cases = [
        (gen + ["-m", "laion-aesthetic-v1", "--model", model], "Missing option '--pipeline'"),
        (fin + ["-r", "laion-aesthetic-v1", "--model", model], "Missing option '--pipeline'"),
        (gen + ["--pipeline", str(tmp_path / "empty"), "-m", "laion-aesthetic-v1", "--model", model],
         "cannot load a diffusers pipeline"),
        (fin + ["--pipeline", str(tmp_path / "empty"), "-r", "laion-aesthetic-v1", "--model", model],
         "cannot load a diffusers pipeline"),
        (gen + ["--pipeline", "nobody/nothing", "-m", "laion-aesthetic-v1", "--model", model],
         "is not in the local hub cache and the hub cannot be reached"),
        # the metric cannot be loaded (offline, nothing cached): its error, not a traceback
        (gen + ["--pipeline", str(tmp_path / "empty"), "-m", "laion-aesthetic-v1"], "error: LAION aesthetic v1 head"),
        (fin + ["--pipeline", str(tmp_path / "empty"), "-r", "laion-aesthetic-v1", "--model", str(tmp_path / "empty")],
         "error: "),
    ]
    for args, message in cases:
        r = runner.invoke(app, args, env={"COLUMNS": "400"})
        assert r.exit_code == 2, (args, r.output, r.exception)
        assert message in " ".join(r.output.split()), (args, r.output)
        assert "Traceback" not in r.output


def test_report_names_a_text_cell_in_a_score_column(tmp_path):
    from prefscore.cli import app

    (tmp_path / "s.csv").write_text("image,prompt,laion-aesthetic,other,generator\na.png,p,5.1,0.3,x\n"
                                    "b.png,p,oops,0.4,y\nc.png,p,4.2,0.1,x\n")
    r = CliRunner().invoke(app, ["report", str(tmp_path / "s.csv"), "-o", str(tmp_path / "r.html")], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert ("score column 'laion-aesthetic' has 1 cell(s) that are not numbers, read as missing scores (NaN): "
            "line 3 ('oops')") in " ".join(r.output.split())
    saved = json.loads((tmp_path / "r_tables" / "report.json").read_text())
    assert saved["metrics"] == ["laion-aesthetic", "other"]  # kept, not dropped; "generator" is not a score


# -- 8, 12, 14b. the annotation server --------------------------------------------------------------


def _annotation_store(tmp_path):
    from test_annotate import make_store

    return make_store(tmp_path)


def test_request_bodies_are_capped_and_image_ids_are_checked(tmp_path):
    from fastapi.testclient import TestClient

    from prefscore.annotate import create_app
    from prefscore.annotate.app import MAX_BODY_BYTES

    store = _annotation_store(tmp_path)
    token = store.add_annotator("alice")
    client = TestClient(create_app(store))
    big = json.dumps({"token": "x" * (MAX_BODY_BYTES + 10)})
    r = client.post("/api/login", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over" in r.json()["detail"]

    def chunks():  # no Content-Length: streamed, counted as it arrives
        for _ in range(64):
            yield b" " * 4096

    r = client.post("/api/login", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.post("/api/login", json={"token": token}).status_code == 200  # small bodies still work
    assert client.post("/api/login", json={"token": "t" * 300}).status_code == 422  # field sizes are bounded too
    for bad in ("99999999999999999999999999999999", "1", "-1", "a" * 100, "..%2F..%2Fetc%2Fpasswd"):
        assert client.get(f"/api/image/{bad}").status_code == 404, bad


def test_public_ids_are_random_and_old_databases_get_them(tmp_path):
    import re
    import sqlite3

    from prefscore.annotate import Store
    from prefscore.annotate.db import PUBLIC_ID_RE

    store = _annotation_store(tmp_path)
    token = store.add_annotator("alice")
    who = store.authenticate(token)
    pair = store.next_assignment(who.id)
    for side in ("left", "right"):
        pid = pair[side]["item_id"]
        assert isinstance(pid, str) and PUBLIC_ID_RE.match(pid) and not re.fullmatch(r"\d+", pid)
        assert pair[side]["url"] == f"/api/image/{pid}" and store.image_path(pid)
    with store.read() as conn:
        ids = [r[0] for r in conn.execute("SELECT public_id FROM items ORDER BY id")]
    assert len(set(ids)) == len(ids) == 9
    # a database from before public ids: they are added when it is opened, answers kept
    with sqlite3.connect(store.path) as conn:
        conn.execute("DROP INDEX items_public_id")
        conn.execute("ALTER TABLE items DROP COLUMN public_id")
    again = Store(store.path)
    with again.read() as conn:
        fresh = [r[0] for r in conn.execute("SELECT public_id FROM items ORDER BY id")]
    assert all(PUBLIC_ID_RE.match(p) for p in fresh) and len(set(fresh)) == 9 and not set(fresh) & set(ids)


def test_leaderboard_needs_its_own_token_unless_public(tmp_path):
    from fastapi.testclient import TestClient

    from prefscore.annotate import create_app

    store = _annotation_store(tmp_path)
    annotator = store.add_annotator("alice")
    client = TestClient(create_app(store))
    assert client.get("/api/leaderboard").status_code == 401
    assert client.post("/api/login", json={"token": annotator}).status_code == 200
    assert client.get("/api/leaderboard").status_code == 401  # a signed-in annotator stays blind
    assert client.get("/api/leaderboard", headers={"Authorization": f"Bearer {annotator}"}).status_code == 401
    board = store.leaderboard_token()
    assert store.leaderboard_token() == board  # stable until reset
    r = client.get("/api/leaderboard", headers={"Authorization": f"Bearer {board}"})
    assert r.status_code == 200 and "generators" in r.json()
    new = store.leaderboard_token(reset=True)
    assert client.get("/api/leaderboard", headers={"Authorization": f"Bearer {board}"}).status_code == 401
    assert client.get("/api/leaderboard", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert TestClient(create_app(store, public_leaderboard=True)).get("/api/leaderboard").status_code == 200


def test_serve_needs_create_for_a_new_database_and_warns_on_all_interfaces(tmp_path, monkeypatch):
    import uvicorn

    from prefscore.annotate.cli import reachable_host
    from prefscore.cli import app
    from test_annotate import make_images

    runner = CliRunner()
    images = make_images(tmp_path)
    db = tmp_path / "typo.sqlite"
    r = runner.invoke(app, ["annotate", "serve", "--images", str(images), "--db", str(db)], env={"COLUMNS": "400"})
    assert r.exit_code == 1 and "no such annotation database (a mistyped --db?" in r.output and not db.exists()
    r = runner.invoke(app, ["annotate", "add-annotator", "bob", "--db", str(db)])
    assert r.exit_code == 1 and not db.exists()

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: ran.update(kw, app=app_))
    r = runner.invoke(app, ["annotate", "serve", "--images", str(images), "--db", str(db), "--create", "-a", "eve",
                            "--host", "0.0.0.0", "--port", "8123"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert ran["host"] == "0.0.0.0" and db.is_file()
    text = " ".join(r.output.split())
    real = reachable_host("0.0.0.0")
    assert real != "0.0.0.0" and f"http://{real}:8123/?token=" in text
    assert "warning: bound to 0.0.0.0: the server is reachable from other machines on every network interface" in text
    from prefscore.annotate import Store

    board = Store(db).leaderboard_token()
    assert f"leaderboard: http://{real}:8123/leaderboard?token={board}" in text
    r = runner.invoke(app, ["annotate", "serve", "--db", str(db), "--public-leaderboard"], env={"COLUMNS": "400"})
    assert r.exit_code == 0 and "leaderboard: http://127.0.0.1:8000/leaderboard (public" in " ".join(r.output.split())
    assert "warning" not in r.output  # loopback: nothing to warn about


_SERVER = """
import socket, sys, uvicorn
from prefscore.annotate import Store, create_app
sock = socket.socket(); sock.bind(("127.0.0.1", 0))
open(sys.argv[2], "w").write(str(sock.getsockname()[1]))
config = uvicorn.Config(create_app(Store(sys.argv[1])), log_level="warning", lifespan="off")
uvicorn.Server(config).run(sockets=[sock])
"""


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _oversized(port: int, chunked: bool) -> bytes:
    """One /api/login with a 100 MB body (declared, or streamed in chunks); returns the status line.
    The body is sent until the server answers (it answers without reading it)."""
    import select
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    try:
        head = b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: 100000000\r\n\r\n"
        sock.sendall(head)
        piece = b" " * 65536
        sent = 0
        while sent < 100_000_000:
            ready, _, _ = select.select([sock], [], [], 0)
            if ready:
                break
            try:
                sock.sendall(b"10000\r\n" + piece + b"\r\n" if chunked else piece)
            except OSError:  # the server closed the connection after answering
                break
            sent += len(piece)
        response = sock.recv(4096)
        return response.split(b"\r\n", 1)[0]
    finally:
        sock.close()


def test_oversized_bodies_leave_a_real_servers_memory_flat(tmp_path):
    import subprocess
    import sys
    import time

    import httpx

    store = _annotation_store(tmp_path)
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                           os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(store.path), str(port_file)], env=env)
    try:
        deadline = time.monotonic() + 120  # generous: a readiness condition, not a timing assertion
        port = None
        while True:
            assert proc.poll() is None, "the server exited"
            if port is None and port_file.is_file() and port_file.read_text():
                port = int(port_file.read_text())
            if port is not None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        assert _oversized(port, chunked=False).endswith(b"413 Request Entity Too Large")  # warm-up
        before = _rss_kib(proc.pid)
        for i in range(6):
            assert _oversized(port, chunked=bool(i % 2)).endswith(b"413 Request Entity Too Large")
        grown_mib = (_rss_kib(proc.pid) - before) / 1024
        # six 100 MB bodies: holding any one of them would add ~100 MB; 30 MB of slack for allocator noise
        assert grown_mib < 30, f"server RSS grew by {grown_mib:.0f} MiB"
        assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)
