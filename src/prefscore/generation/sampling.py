"""Reward-guided sampling around any diffusers pipeline: best-of-N and rejection sampling.

For each prompt the pipeline draws candidates from seeds ``seed + prompt_index * stride + j``
(recorded, so each candidate can be regenerated), a scorer rates them with the exact (Pillow) path
of a prefscore metric, and the best one is kept (best-of-N), or candidates are drawn until one
reaches a threshold (rejection sampling; the best seen is kept when none does). With ``out_dir``
every candidate image, ``candidates.jsonl`` / ``candidates.csv`` (all scores) and ``chosen.jsonl``
plus ``chosen/`` (the picks) are written.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..base import Metric

#: seeds of prompt ``i`` start at ``seed + i * SEED_STRIDE`` (room for that many candidates per prompt)
SEED_STRIDE = 100_000


@dataclass
class Candidate:
    """One generated image: its prompt, seed, score (the scorer's units) and file (when written)."""

    prompt_index: int
    prompt: str
    index: int
    seed: int
    score: float
    image: Any = field(repr=False, default=None)  # PIL.Image
    path: str | None = None

    def record(self) -> dict:
        d = asdict(self)
        d.pop("image")
        return d


@dataclass
class PromptResult:
    """All candidates of one prompt and the chosen one (``accepted``: it met the threshold, or best-of-N)."""

    prompt_index: int
    prompt: str
    candidates: list[Candidate]
    chosen: int
    accepted: bool = True
    threshold: float | None = None

    @property
    def best(self) -> Candidate:
        return self.candidates[self.chosen]

    @property
    def scores(self) -> np.ndarray:
        return np.asarray([c.score for c in self.candidates], dtype=np.float64)


class Scorer:
    """Scores PIL images for one prompt with a prefscore metric (exact path), higher is better.

    ``output``: the column of a multi-output metric. Lower-is-better metrics are ranked by the
    negated score (the written score keeps the metric's own units and sign).
    """

    def __init__(self, metric: Metric, output: str | None = None, batch_size: int | None = None):
        self.metric = metric
        names = tuple(metric.output_names)
        if output is None and len(names) != 1:
            raise ValueError(f"metric '{metric.name}' has outputs {', '.join(names)}; choose one with output=")
        if output is not None and output not in names:
            raise ValueError(f"metric '{metric.name}' has no output {output!r} (outputs: {', '.join(names)})")
        self.column = 0 if output is None else names.index(output)
        self.higher_is_better = bool(metric.spec.higher_is_better)
        self.batch_size = batch_size
        self.name = metric.name if output is None else f"{metric.name}.{output}"

    def __call__(self, images: Sequence, prompt: str) -> np.ndarray:
        prompts = prompt if self.metric.needs_prompt else None
        out = np.asarray(self.metric.score(list(images), prompts, batch_size=self.batch_size, on_error="nan"),
                         dtype=np.float64)
        return out[:, self.column] if out.ndim == 2 else out

    def key(self, score: float) -> float:
        """Sort key: higher is better; NaN (unscorable) is worst."""
        if math.isnan(score):
            return -math.inf
        return score if self.higher_is_better else -score


def as_scorer(scorer, output: str | None = None) -> Scorer | Callable:
    if isinstance(scorer, Metric):
        return Scorer(scorer, output)
    if callable(scorer):
        return scorer
    raise TypeError(f"cannot score with {type(scorer).__name__}: pass a prefscore Metric or a callable(images, prompt)")


def generate_images(pipeline, prompt: str, seeds: Sequence[int], **pipeline_kwargs) -> list:
    """``len(seeds)`` PIL images for ``prompt`` from a diffusers pipeline, one generator per seed."""
    device = getattr(pipeline, "device", torch.device("cpu"))
    gen_device = "cpu" if torch.device(device).type == "mps" else device
    generators = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]
    out = pipeline(prompt=[prompt] * len(seeds), generator=generators, output_type="pil", **pipeline_kwargs)
    images = out.images if hasattr(out, "images") else out[0]
    if len(images) != len(seeds):
        raise RuntimeError(f"the pipeline returned {len(images)} images for {len(seeds)} seeds")
    return list(images)


def _key(scorer, score: float) -> float:
    return scorer.key(score) if isinstance(scorer, Scorer) else (-math.inf if math.isnan(score) else score)


def _draw(pipeline, scorer, i: int, prompt: str, start: int, count: int, seed: int, batch_size: int,
          pipeline_kwargs: dict) -> list[Candidate]:
    out = []
    for b in range(start, start + count, batch_size):
        idx = list(range(b, min(b + batch_size, start + count)))
        seeds = [seed + i * SEED_STRIDE + j for j in idx]
        images = generate_images(pipeline, prompt, seeds, **pipeline_kwargs)
        scores = np.asarray(scorer(images, prompt), dtype=np.float64).reshape(-1)
        for j, s, img, sc in zip(idx, seeds, images, scores):
            out.append(Candidate(i, prompt, j, s, float(sc), img))
    return out


def best_of_n(pipeline, prompts: Sequence[str], scorer, n: int = 8, *, seed: int = 0, batch_size: int = 4,
              output: str | None = None, out_dir: str | Path | None = None, progress: bool = False,
              **pipeline_kwargs) -> list[PromptResult]:
    """Draw ``n`` candidates per prompt and keep the highest-scoring one.

    ``scorer``: a prefscore metric (scored with its exact path; ``output`` for a multi-output
    metric) or a callable ``(images, prompt) -> scores``. ``pipeline_kwargs`` go to the pipeline
    (``num_inference_steps``, ``guidance_scale``, ``height``...). Returns one :class:`PromptResult`
    per prompt; ``out_dir`` also writes the files (see the module docstring).
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if n > SEED_STRIDE:
        raise ValueError(f"n must be at most {SEED_STRIDE}")
    scorer = as_scorer(scorer, output)
    results = []
    with _bar(progress, len(prompts), "best-of-n") as advance:
        for i, prompt in enumerate(prompts):
            cands = _draw(pipeline, scorer, i, prompt, 0, n, seed, batch_size, pipeline_kwargs)
            chosen = max(range(len(cands)), key=lambda k: (_key(scorer, cands[k].score), -k))
            results.append(PromptResult(i, prompt, cands, chosen))
            advance()
    if out_dir is not None:
        write_results(results, out_dir, getattr(scorer, "name", "score"))
    return results


def rejection_sample(pipeline, prompts: Sequence[str], scorer, threshold: float, max_candidates: int = 16, *,
                     seed: int = 0, batch_size: int = 4, output: str | None = None, out_dir: str | Path | None = None,
                     progress: bool = False, **pipeline_kwargs) -> list[PromptResult]:
    """Draw candidates in batches until one scores at least ``threshold`` (at most
    ``max_candidates``); the first accepted one is chosen, else the best seen (``accepted=False``).

    For a lower-is-better metric "at least" means "at most" (the threshold is in the metric's units).
    """
    if max_candidates < 1:
        raise ValueError("max_candidates must be at least 1")
    scorer = as_scorer(scorer, output)
    results = []
    with _bar(progress, len(prompts), "rejection") as advance:
        for i, prompt in enumerate(prompts):
            cands: list[Candidate] = []
            accepted = None
            while accepted is None and len(cands) < max_candidates:
                count = min(batch_size, max_candidates - len(cands))
                new = _draw(pipeline, scorer, i, prompt, len(cands), count, seed, count, pipeline_kwargs)
                cands.extend(new)
                passing = [c.index for c in new if _key(scorer, c.score) >= _key(scorer, threshold)]
                accepted = passing[0] if passing else None
            if accepted is None:
                chosen = max(range(len(cands)), key=lambda k: (_key(scorer, cands[k].score), -k))
            else:
                chosen = accepted
            results.append(PromptResult(i, prompt, cands, chosen, accepted is not None, float(threshold)))
            advance()
    if out_dir is not None:
        write_results(results, out_dir, getattr(scorer, "name", "score"))
    return results


def write_results(results: Sequence[PromptResult], out_dir: str | Path, score_name: str = "score") -> Path:
    """Write every candidate image (``images/``), ``candidates.jsonl`` / ``candidates.csv``, the chosen
    images (``chosen/``) and ``chosen.jsonl`` under ``out_dir``."""
    import pandas as pd

    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "chosen").mkdir(parents=True, exist_ok=True)
    rows, chosen_rows = [], []
    for res in results:
        for c in res.candidates:
            path = root / "images" / f"p{res.prompt_index:04d}_c{c.index:03d}.png"
            if c.image is not None:
                c.image.save(path)
            c.path = str(path.relative_to(root))
            rows.append({**c.record(), "metric": score_name, "chosen": c.index == res.chosen})
        best = res.best
        pick = root / "chosen" / f"p{res.prompt_index:04d}.png"
        if best.image is not None:
            best.image.save(pick)
        chosen_rows.append({**best.record(), "path": str(pick.relative_to(root)), "candidate_path": best.path,
                            "metric": score_name, "n_candidates": len(res.candidates), "accepted": res.accepted,
                            "threshold": res.threshold})
    with open(root / "candidates.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    pd.DataFrame(rows).to_csv(root / "candidates.csv", index=False)
    with open(root / "chosen.jsonl", "w") as f:
        for r in chosen_rows:
            f.write(json.dumps(r) + "\n")
    return root


class _bar:
    """A rich progress bar over prompts (no-op when disabled); yields an ``advance()`` callable."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn())
        self.progress.start()
        task = self.progress.add_task(self.label, total=self.total)
        return lambda: self.progress.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()
        return False
