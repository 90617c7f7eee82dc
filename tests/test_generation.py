"""Reward-guided sampling and reward fine-tuning on a tiny random Stable Diffusion pipeline (CPU)."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import prefscore
from prefscore.generation import (
    FinetuneConfig, FunctionReward, LoraSettings, MetricReward, RewardFinetuner, RewardHackingWarning, WeightedReward,
    best_of_n, rejection_sample)
from prefscore.generation.cli import register
from prefscore.generation.diffusion import to_pil
from prefscore.generation.lora import lora_state
from prefscore.generation.refl import refl_loss
from prefscore.generation.sampling import generate_images
from prefscore.generation.tiny import TINY_SIZE, build_tiny_pipeline

from conftest import shared_fixture

PROMPTS = ["a red fox", "a blue car", "a cat on a sofa", "a dog in the snow"]
GEN = {"num_inference_steps": 3, "height": TINY_SIZE, "width": TINY_SIZE}
# the tiny model learns through its attention projections and the UNet's output convolution
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv_out")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_pipeline(shared_fixture("pickscore") / "model", path, seed=0)
    return path


def _pipe(pipe_dir):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(pipe_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def aesthetic():
    return prefscore.load("laion-aesthetic-v1", model=shared_fixture("laion-aesthetic") / "model")


def brightness(pixels, prompts):
    return pixels.mean(dim=(1, 2, 3))


BRIGHT = FunctionReward(brightness, "brightness")
DARK = FunctionReward(lambda x, p: 1 - x.mean(dim=(1, 2, 3)), "darkness")


def _config(**kw):
    base = dict(method="refl", steps=4, batch_size=2, lr=0.05, num_inference_steps=6, refl_steps=(1, 3),
                guidance_scale=1.0, grad_scale=1.0, eval_every=2, eval_images=2, checkpoint_every=2,
                lora=LoraSettings(rank=4, alpha=16.0, targets=TARGETS))
    base.update(kw)
    return FinetuneConfig(**base)


# -- sampling -------------------------------------------------------------------------------------


def test_best_of_n_picks_the_argmax_and_writes_everything(pipe_dir, aesthetic, tmp_path):
    pipe = _pipe(pipe_dir)
    results = best_of_n(pipe, PROMPTS[:2], aesthetic, n=4, seed=7, batch_size=3, out_dir=tmp_path, **GEN)
    assert len(results) == 2
    for res in results:
        scores = res.scores
        assert len(scores) == 4 and np.isfinite(scores).all() and np.ptp(scores) > 0
        assert res.chosen == int(np.argmax(scores))
        # the recorded score is the metric's exact score of the written file
        written = aesthetic.score(tmp_path / res.best.path)
        assert float(written) == pytest.approx(res.best.score, abs=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and sum(r["chosen"] for r in rows) == 2
    chosen = [json.loads(line) for line in (tmp_path / "chosen.jsonl").read_text().splitlines()]
    assert [c["seed"] for c in chosen] == [r.best.seed for r in results]
    assert (tmp_path / "candidates.csv").is_file() and len(list((tmp_path / "chosen").iterdir())) == 2
    # a recorded seed regenerates its candidate
    again = generate_images(pipe, results[0].prompt, [results[0].best.seed], **GEN)[0]
    assert np.array_equal(np.asarray(again), np.asarray(results[0].best.image))


def test_rejection_sampling(pipe_dir, aesthetic):
    pipe = _pipe(pipe_dir)
    probe = best_of_n(pipe, PROMPTS[:1], aesthetic, n=6, seed=3, batch_size=2, **GEN)[0]  # same batches as below
    threshold = float(np.sort(probe.scores)[-2])  # two of the six candidates reach it
    res = rejection_sample(pipe, PROMPTS[:1], aesthetic, threshold, max_candidates=6, seed=3, batch_size=2, **GEN)[0]
    assert res.accepted and res.best.score >= threshold
    first = next(i for i, s in enumerate(probe.scores) if s >= threshold)
    assert res.best.index == first and len(res.candidates) <= 6
    never = rejection_sample(pipe, PROMPTS[:1], aesthetic, 1e9, max_candidates=3, seed=3, batch_size=2, **GEN)[0]
    assert not never.accepted and len(never.candidates) == 3 and never.chosen == int(np.argmax(never.scores))


def test_generate_cli(pipe_dir, tmp_path):
    app = typer.Typer()
    register(app)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue car\n")
    model = shared_fixture("laion-aesthetic") / "model"
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", "--pipeline", str(pipe_dir), "--prompts", str(prompts), "--n", "3",
                                      "--metric", "laion-aesthetic-v1", "--model", str(model), "--steps", "2",
                                      "--height", "16", "--width", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["metric"] for r in rows} == {"laion-aesthetic-v1"}
    for p in (0, 1):
        mine = [r for r in rows if r["prompt_index"] == p]
        best = max(mine, key=lambda r: r["score"])
        assert best["chosen"] and (out / "chosen" / f"p{p:04d}.png").is_file()


# -- rewards and gradients -----------------------------------------------------------------------


def test_gradients_reach_lora_weights_through_a_metric(pipe_dir, aesthetic, tmp_path):
    pipe = _pipe(pipe_dir)
    reward = MetricReward(aesthetic)
    tuner = RewardFinetuner(pipe, reward, PROMPTS, _config(), tmp_path)
    loss, rewards, mid = refl_loss(tuner.parts, reward, PROMPTS[:2], torch.Generator().manual_seed(0),
                                   random.Random(0), 6, (1, 3))
    assert 1 <= mid <= 3 and rewards.shape == (2,)
    loss.backward()
    lora = {n: p for n, p in pipe.unet.named_parameters() if "lora" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert sum(float(p.grad.abs().sum()) for p in lora.values() if p.grad is not None) > 0
    frozen = [p for n, p in pipe.unet.named_parameters() if "lora" not in n]
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    assert all(p.grad is None for p in pipe.vae.parameters())


def test_weighted_and_composite_rewards(aesthetic, tmp_path):
    from prefscore.evaluation.composite import Calibration, Component, Normaliser

    model = str(shared_fixture("laion-aesthetic") / "model")
    cal = Calibration([
        Component("laion-aesthetic-v1", "laion-aesthetic-v1", model, {}, True, 0.7, Normaliser("zscore", {"mean": 0.3, "std": 0.1})),
        Component("laion-aesthetic", "laion-aesthetic", model, {}, True, 0.3, Normaliser("minmax", {"low": -20.0, "high": 5.0})),
    ], "mixed", "user")
    path = cal.save(tmp_path / "composite.json")
    composite = prefscore.load("composite", model=path)
    reward = prefscore.generation.as_reward(composite)
    pixels = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1), requires_grad=True)
    value = reward(pixels, ["a", "b"])
    images = to_pil(pixels)  # exactly the 8-bit levels the reward rounds to
    assert torch.allclose(value.double(), torch.from_numpy(composite.score(images)), atol=1e-5)
    value.sum().backward()
    assert pixels.grad.abs().sum() > 0
    weighted = WeightedReward([(MetricReward(aesthetic), 2.0), (BRIGHT, -1.0)])
    with torch.no_grad():
        expect = 2 * aesthetic.score_tensor(pixels) - brightness(pixels, None)
        assert torch.allclose(weighted(pixels, ["a", "b"]), expect)
    bad = Calibration([Component("laion-aesthetic-v1", "laion-aesthetic-v1", model, {}, True, 1.0,
                                 Normaliser("percentile", {"reference": [0.1, 0.2, 0.3]}))], "percentile", "user")
    with pytest.raises(ValueError, match="percentile"):
        prefscore.generation.as_reward(prefscore.load("composite", model=bad.save(tmp_path / "bad.json")))


# -- fine-tuning -----------------------------------------------------------------------------------


def test_refl_raises_a_learnable_reward_and_flags_the_held_out_drop(pipe_dir, tmp_path):
    from PIL import Image

    pipe = _pipe(pipe_dir)
    rng = np.random.default_rng(0)
    pretrain = [(Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)), p) for p in PROMPTS]
    tuner = RewardFinetuner(pipe, BRIGHT, PROMPTS, _config(steps=6, eval_every=3, checkpoint_every=0, pretrain_weight=1e-4),
                            tmp_path, held_out=[DARK], pretrain_data=pretrain)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tuner.train()
    means = [e["means"]["brightness"] for e in result.evaluations]
    assert [e["step"] for e in result.evaluations] == [0, 3, 6]
    assert means[-1] > means[1] > means[0] + 3e-3, means  # the same seeds and prompts give brighter images
    assert all(np.isfinite(h["pretrain_loss"]) for h in result.history)
    hacking = [w for w in caught if issubclass(w.category, RewardHackingWarning)]
    assert hacking and "darkness" in str(hacking[0].message)
    assert result.findings and result.findings[0]["metric"] == "darkness"
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 6
    # the exported adapter loads into a fresh pipeline and reproduces the tuned model's output
    fresh = _pipe(pipe_dir)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    tuned = tuner.parts.sample(PROMPTS[:1], torch.Generator().manual_seed(5), 6)
    from prefscore.generation.diffusion import DiffusionParts

    loaded = DiffusionParts.from_pipeline(fresh, "ddpm", 1.0).sample(PROMPTS[:1], torch.Generator().manual_seed(5), 6)
    assert torch.allclose(tuned, loaded, atol=1e-5)


def test_draft_k_trains(pipe_dir, tmp_path):
    pipe = _pipe(pipe_dir)
    tuner = RewardFinetuner(pipe, BRIGHT, PROMPTS, _config(method="draft", draft_k=2, steps=4, eval_every=4,
                                                           checkpoint_every=0), tmp_path)
    result = tuner.train()
    assert all(np.isfinite(h["reward_loss"]) and h["grad_norm"] > 0 for h in result.history)
    assert result.evaluations[-1]["means"]["brightness"] > result.evaluations[0]["means"]["brightness"]


@pytest.mark.filterwarnings("ignore::prefscore.generation.RewardHackingWarning")
def test_resume_gives_the_same_state(pipe_dir, tmp_path):
    straight = RewardFinetuner(_pipe(pipe_dir), BRIGHT, PROMPTS, _config(steps=4), tmp_path / "a", held_out=[DARK])
    straight.train()
    first = RewardFinetuner(_pipe(pipe_dir), BRIGHT, PROMPTS, _config(steps=2), tmp_path / "b", held_out=[DARK])
    first.train()
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step-000002"
    resumed = RewardFinetuner(_pipe(pipe_dir), BRIGHT, PROMPTS, _config(steps=4), tmp_path / "b", held_out=[DARK])
    resumed.train()
    a, b = lora_state(straight.pipeline.unet), lora_state(resumed.pipeline.unet)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["reward"] for h in straight.history] == [h["reward"] for h in resumed.history]
    assert [e["means"] for e in straight.evaluations] == [e["means"] for e in resumed.evaluations]
    changed = RewardFinetuner(_pipe(pipe_dir), BRIGHT, PROMPTS, _config(steps=6, batch_size=1), tmp_path / "b")
    with pytest.raises(ValueError, match="batch_size"):
        changed.train()


def test_finetune_cli(pipe_dir, tmp_path):
    app = typer.Typer()
    register(app)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    model = shared_fixture("laion-aesthetic") / "model"
    out = tmp_path / "run"
    args = ["finetune", "--pipeline", str(pipe_dir), "--prompts", str(prompts), "--reward", "laion-aesthetic-v1",
            "--model", str(model), "--held-out", f"laion-aesthetic={model}", "--train-steps", "2",
            "--inference-steps", "4", "--refl-steps", "1,2", "--guidance", "1.0", "--eval-every", "1",
            "--checkpoint-every", "1", "--lr", "0.01", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    evals = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1, 2]
    assert set(evals[0]["means"]) == {"laion-aesthetic-v1", "laion-aesthetic"}
    assert (out / "checkpoints" / "step-000002" / "lora.safetensors").is_file()
    bad = CliRunner().invoke(app, ["finetune", "--pipeline", str(pipe_dir), "--prompts", str(prompts), "--out", str(out)])
    assert bad.exit_code != 0 and "--reward" in bad.output


def test_prompt_files_and_pretrain_jsonl(tmp_path):
    from PIL import Image

    from prefscore.generation import PretrainData
    from prefscore.generation.cli import read_prompts

    (tmp_path / "p.txt").write_text("a fox\n\na car\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a fox"}\n{"prompt": "a car"}\n')
    (tmp_path / "p.csv").write_text("prompt,x\na fox,1\na car,2\n")
    (tmp_path / "p.json").write_text('["a fox", "a car"]')
    for suffix in ("txt", "jsonl", "csv", "json"):
        assert read_prompts(tmp_path / f"p.{suffix}") == ["a fox", "a car"]
    (tmp_path / "bad.jsonl").write_text('{"text": "a fox"}\n')
    with pytest.raises(typer.BadParameter, match="bad.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "pre.jsonl").write_text('{"image": "red.png", "prompt": "red"}\n')
    data = PretrainData.from_jsonl(tmp_path / "pre.jsonl", 16, 16)
    assert data.images.shape == (1, 3, 16, 16) and data.captions == ["red"]
    assert torch.allclose(data.images[0, 0], torch.ones(16, 16)) and torch.allclose(data.images[0, 1], -torch.ones(16, 16))
    (tmp_path / "pre_bad.jsonl").write_text('{"image": "red.png"}\n')
    with pytest.raises(ValueError, match="pre_bad.jsonl:1"):
        PretrainData.from_jsonl(tmp_path / "pre_bad.jsonl", 16, 16)
