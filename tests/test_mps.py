"""MPS (overall) against numbers from the official Kwai-Kolors/MPS code (tests/data/mps, see its README)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import prefscore
from conftest import parity_tol, read_jsonl
from prefscore.errors import CheckpointError, ModelSourceError, ScoringError
from prefscore.metrics.mps import OVERALL_CONDITION, condition_bias, convert_checkpoint, read_mps_checkpoint

DATA = Path(__file__).parent / "data" / "mps"
CASES = read_jsonl(DATA / "cases.jsonl")
SCORED = [c for c in CASES if "scores" in c]
META = json.loads((DATA / "set.json").read_text())
PROCESSOR_FILES = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "preprocessor_config.json"]



@pytest.fixture(scope="module")
def metric():
    torch.set_num_threads(1)
    return prefscore.load("mps", model=str(DATA))


def _reference_scores() -> dict[tuple[str, str], float]:
    """(prompt, image) -> the official score (every pair an image was in gives the same number)."""
    ref: dict[tuple[str, str], float] = {}
    for case in SCORED:
        for image, score in zip(case["images"], case["scores"]):
            ref.setdefault((case["prompt"], image), score)
            assert abs(ref[(case["prompt"], image)] - score) <= 1e-5  # the partner does not matter
    return ref


def test_every_case_matches_official_scores_and_probabilities(metric):
    assert len(SCORED) == 30 and META["condition"] == OVERALL_CONDITION
    for case in SCORED:
        images = [DATA / i for i in case["images"]]
        scores = metric.score(images, case["prompt"])
        for got, ref in zip(scores, case["scores"]):
            assert abs(got - ref) <= parity_tol(ref), (case["prompt"], case["images"], got, ref)
        probs = metric.compare(images, case["prompt"])
        np.testing.assert_allclose(probs, case["probs"], rtol=0, atol=1e-4)
    # the cases are not degenerate: scores differ between images well beyond the tolerance
    assert np.ptp([s for c in SCORED for s in c["scores"]]) > 1.0


def test_batched_mixed_prompts_match_official(metric):
    """All (prompt, image) items in one call, batches mixing prompts, as the engine runs them."""
    ref = _reference_scores()
    keys = sorted(ref)
    scores = metric.score([DATA / image for _, image in keys], [prompt for prompt, _ in keys], batch_size=4)
    worst = max(abs(s - ref[k]) / max(1.0, abs(ref[k])) for s, k in zip(scores, keys))
    assert worst <= 1e-4, worst


def test_tokenisation_matches_reference_ids(metric):
    for case in CASES:
        assert metric._tokens([case["prompt"]])[0].tolist() == case["input_ids"], case["prompt"]
    assert metric._tokens([OVERALL_CONDITION])[0].tolist() == META["condition_input_ids"]
    long = next(c for c in CASES if len(c["prompt"]) > 300)
    assert len(long["input_ids"]) == 77 and long["input_ids"][-1] == max(long["input_ids"])  # truncated, ends in EOT


def test_condition_mask_keeps_the_reference_tokens(metric):
    """The number of prompt tokens the condition mask keeps, as the official code's own lines give it."""
    condition = metric.condition_tokens()
    kept = {}
    for case in CASES:
        tokens, _ = metric.token_features([case["prompt"]])
        kept[case["prompt"]] = int((condition_bias(tokens, condition) == 0).sum())
        assert kept[case["prompt"]] == case["kept_tokens"], case["prompt"]
    assert len(set(kept.values())) > 3 and min(kept.values()) < 77  # the mask really varies


def test_cached_rotary_table_of_the_checkpoint_is_used(metric):
    """The official blocks reuse the rotary table cached in the pickled model (float16 here)."""
    state, _ = read_mps_checkpoint(DATA / "MPS_overall_checkpoint.pth")
    for i, layer in enumerate(metric.cross.layers):
        table = state[f"cross_model.layers.{i}.1.fn.pos_emb"]
        assert table.dtype == torch.float16
        assert torch.equal(layer[1].fn.rotary(257), table.float())


def test_images_the_official_code_cannot_score(metric):
    """1x1 images crash transformers 4.27.3's processor (channel axis guessed wrong); prefscore scores
    them like every other CLIP metric. A truncated file is an error row; nothing else is lost."""
    errors = {c["images"][0]: c["error"] for c in CASES if "error" in c}
    assert "mean must have 1 elements" in errors["images/pixel.png"]
    assert "truncated" in errors["images/truncated.png"]
    prompt = SCORED[0]["prompt"]
    images = [DATA / "images/landscape.png", DATA / "images/truncated.png", DATA / "images/pixel.png"]
    with pytest.raises(ScoringError) as info:
        metric.score(images, prompt)
    scores = info.value.scores
    assert abs(scores[0] - SCORED[0]["scores"][0]) <= parity_tol(SCORED[0]["scores"][0])
    assert np.isnan(scores[1]) and np.isfinite(scores[2])
    assert [e[0] for e in info.value.errors] == [1] and "truncated" in info.value.errors[0][2]
    again = metric.score(images, prompt, on_error="nan")
    np.testing.assert_array_equal(np.isnan(again), [False, True, False])


def test_cli_scores_match_official(tmp_path):
    from prefscore.cli import app

    prompt = SCORED[0]["prompt"]
    ref = {image: s for (p, image), s in _reference_scores().items() if p == prompt}
    out = tmp_path / "scores.csv"
    args = ["score", *[str(DATA / i) for i in sorted(ref)], str(DATA / "images/truncated.png"), "-m", "mps",
            "--model", str(DATA), "--prompt", prompt, "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output  # finished, with an error row (truncated.png)
    rows = {Path(r["image"]).name: r for r in csv.DictReader(out.open())}
    for image, score in ref.items():
        assert abs(float(rows[Path(image).name]["mps"]) - score) <= parity_tol(score), image
    assert "truncated" in rows["truncated.png"]["error"]


def test_converted_state_dicts_give_identical_scores(metric, tmp_path):
    """A safetensors conversion (convert_checkpoint) and a plain torch.save state dict load to the same model."""
    case = SCORED[3]
    images = [DATA / i for i in case["images"]]
    ref = metric.score(images, case["prompt"])
    converted = tmp_path / "st"
    convert_checkpoint(DATA / "MPS_overall_checkpoint.pth", converted)
    for f in PROCESSOR_FILES:
        shutil.copy(DATA / f, converted / f)
    np.testing.assert_array_equal(prefscore.load("mps", model=str(converted)).score(images, case["prompt"]), ref)
    plain = tmp_path / "pt"
    plain.mkdir()
    for f in PROCESSOR_FILES + ["config.json"]:  # config.json: the CLIP config as transformers 4.27.3 wrote it
        shutil.copy(DATA / f, plain / f)
    state, _ = read_mps_checkpoint(DATA / "MPS_overall_checkpoint.pth")
    torch.save({"state_dict": state}, plain / "MPS_overall_checkpoint.pth")
    np.testing.assert_array_equal(prefscore.load("mps", model=str(plain)).score(images, case["prompt"]), ref)


def _state_dir(tmp_path: Path, edit) -> Path:
    d = tmp_path / "edited"
    convert_checkpoint(DATA / "MPS_overall_checkpoint.pth", d)
    for f in PROCESSOR_FILES:
        shutil.copy(DATA / f, d / f)
    from safetensors.torch import load_file, save_file

    path = d / "MPS_overall_checkpoint.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))
    return d


def test_wrong_shape_and_missing_tensors_are_named(tmp_path):
    def reshape(sd):
        sd["cross_model.layers.1.0.fn.to_out.weight"] = torch.zeros(32, 16, dtype=torch.float16)

    with pytest.raises(CheckpointError, match=r"cross_model.layers.1.0.fn.to_out.weight.*\(32, 16\)"):
        prefscore.load("mps", model=str(_state_dir(tmp_path / "a", reshape)))

    def drop(sd):
        del sd["model.vision_model.post_layernorm.weight"]

    with pytest.raises(CheckpointError, match="post_layernorm.weight"):
        prefscore.load("mps", model=str(_state_dir(tmp_path / "b", drop)))

    def stray(sd):
        sd["head.weight"] = torch.zeros(2)

    with pytest.raises(CheckpointError, match="head.weight"):
        prefscore.load("mps", model=str(_state_dir(tmp_path / "c", stray)))


class _Payload:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _model_dir_with(tmp_path: Path, obj, protocol: int = 2) -> Path:
    d = tmp_path / f"evil{protocol}"
    d.mkdir()
    for f in PROCESSOR_FILES:
        shutil.copy(DATA / f, d / f)
    torch.save(obj, d / "MPS_overall_checkpoint.pth", pickle_protocol=protocol)
    return d


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL opcodes
def test_malicious_pickle_is_refused_without_running_it(tmp_path, protocol):
    marker = tmp_path / "pwned"
    d = _model_dir_with(tmp_path, {"model.logit_scale": torch.tensor(1.0), "x": _Payload(marker)}, protocol)
    with pytest.raises(CheckpointError, match=r"refusing to load.*'posix.system'"):
        prefscore.load("mps", model=str(d))
    assert not marker.exists()


def test_malicious_global_hidden_in_the_real_pickle_is_refused(tmp_path):
    """The published pickle with one module's class swapped for builtins.eval: refused, never called."""
    data_name, raw = None, {}
    with zipfile.ZipFile(DATA / "MPS_overall_checkpoint.pth") as z:
        for info in z.infolist():
            raw[info.filename] = z.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data_name = info.filename
    pkl = raw[data_name]
    old = b"ctorch.nn.modules.linear\nLinear\n"
    assert old in pkl
    raw[data_name] = pkl.replace(old, b"c__builtin__\neval\n", 1)
    d = tmp_path / "evil"
    d.mkdir()
    for f in PROCESSOR_FILES:
        shutil.copy(DATA / f, d / f)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, content in raw.items():
            z.writestr(name, content)
    (d / "MPS_overall_checkpoint.pth").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match=r"'builtins.eval'"):
        prefscore.load("mps", model=str(d))


def test_other_objects_are_not_taken_for_the_model(tmp_path):
    d = _model_dir_with(tmp_path, [torch.zeros(2)])
    with pytest.raises(CheckpointError, match="expected the MPS model"):
        prefscore.load("mps", model=str(d))


def test_default_source_says_where_the_checkpoint_is():
    with pytest.raises(ModelSourceError, match="Google Drive"):
        prefscore.load("mps")


def test_score_tensor_is_differentiable_and_close_to_score(metric):
    from PIL import Image

    prompt = SCORED[0]["prompt"]
    path = DATA / "images/landscape.png"
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    pixels.requires_grad_(True)
    value = metric.score_tensor(pixels, prompt)
    value.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert abs(value.item() - metric.score(path, prompt)) <= 1e-5  # the same score, see below
    # quantize=True reproduces Pillow's 8-bit resize in torch: equal to score() on every readable image
    from prefscore.differentiable import measure_gap

    images = sorted({i for c in SCORED for i in c["images"]})
    rows = measure_gap(metric, [DATA / i for i in images], [prompt] * len(images))
    assert len(rows) == 9 and max(r["abs"] for r in rows) <= 1e-5


def test_float16_runs():
    half = prefscore.load("mps", model=str(DATA), dtype="float16")
    case = SCORED[0]
    scores = half.score([DATA / i for i in case["images"]], case["prompt"])
    # float16 end to end (as the README's CUDA run): about 1e-2 from float32 here, not equal
    np.testing.assert_allclose(scores, case["scores"], rtol=0, atol=5e-2 * max(1.0, max(map(abs, case["scores"]))))


def test_evaluate_and_calibrate_accept_mps(tmp_path):
    from prefscore.evaluation import EvalConfig, calibrate, evaluate

    rows = []
    for case in SCORED[:6]:
        a, b = case["images"]
        rows.append({"prompt": case["prompt"], "image_a": str(DATA / a), "image_b": str(DATA / b),
                     "label": "a" if case["probs"][0] > 0.5 else "b"})
    pairs = tmp_path / "pairs.csv"
    with pairs.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    res = evaluate(pairs, metrics=["mps"], models={"mps": str(DATA)}, config=EvalConfig(n_boot=50))
    assert res.get("mps", "accuracy").estimate == pytest.approx(1.0)  # labels are the official preferences
    ref = {"image": [r["image_a"] for r in rows] + [r["image_b"] for r in rows],
           "prompt": [r["prompt"] for r in rows] * 2}
    ref["mps"] = list(prefscore.load("mps", model=str(DATA)).score(ref["image"], ref["prompt"]))
    import pandas as pd

    cal = calibrate(pd.DataFrame(ref), columns=["mps"], models={"mps": str(DATA)})
    assert np.isfinite(cal.apply(pd.DataFrame(ref))).all()


def test_registry_entry():
    spec = prefscore.get_spec("mps")
    assert spec.prompt_aware and spec.higher_is_better and spec.entry == "prefscore.metrics.mps:MPS"
    assert "MIT" in spec.weights_license and "Google Drive" in spec.default_model
    assert set(spec.options) == {"processor", "condition", "checkpoint"}
    with pytest.raises(TypeError, match="no option"):
        prefscore.load("mps", model=str(DATA), conditon="x")


def test_engine_with_another_clip_h_metric_sharing_preprocessing(tmp_path):
    """mps and pickscore in one job: one preprocessing per image (same pipeline), each its own model."""
    from conftest import shared_fixture
    from prefscore.cli import app

    pick = shared_fixture("pickscore") / "model"
    prompt = SCORED[0]["prompt"]
    ref = {image: s for (p, image), s in _reference_scores().items() if p == prompt}
    out = tmp_path / "scores.jsonl"
    args = ["score", *[str(DATA / i) for i in sorted(ref)], "-m", "mps,pickscore", "--model", f"mps={DATA}",
            "--model", f"pickscore={pick}", "--prompt", prompt, "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert len(rows) == len(ref)
    for row in rows:
        image = "images/" + Path(row["image"]).name
        assert abs(row["mps"] - ref[image]) <= parity_tol(ref[image]) and np.isfinite(row["pickscore"])


def test_processor_from_the_laion_repo_offline_is_a_clear_error(tmp_path):
    """A directory with only the checkpoint needs the laion processor: offline, the error names it;
    --option processor=DIR supplies it."""
    d = tmp_path / "only-checkpoint"
    d.mkdir()
    shutil.copy(DATA / "MPS_overall_checkpoint.pth", d / "MPS_overall_checkpoint.pth")
    with pytest.raises(ModelSourceError, match="laion/CLIP-ViT-H-14-laion2B-s32B-b79K"):
        prefscore.load("mps", model=str(d))
    case = SCORED[0]
    scores = prefscore.load("mps", model=str(d), processor=str(DATA)).score([DATA / i for i in case["images"]], case["prompt"])
    np.testing.assert_allclose(scores, case["scores"], rtol=0, atol=parity_tol(max(map(abs, case["scores"]))))
