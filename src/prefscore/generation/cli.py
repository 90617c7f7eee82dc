"""``prefscore generate`` (best-of-N / rejection sampling) and ``prefscore finetune`` (ReFL / DRaFT-K).

Wire in with ``register(app)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..cli_args import parse_options

console = Console()
err_console = Console(stderr=True)


def read_prompts(path: Path) -> list[str]:
    """Prompts from ``.txt`` (one per line), ``.jsonl`` (key ``prompt``), ``.csv`` / ``.parquet``
    (column ``prompt``) or ``.json`` (a list of strings)."""
    path = Path(path)
    if not path.is_file():
        raise typer.BadParameter(f"{path}: prompts file not found")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                    raise typer.BadParameter(f"{path}:{n}: each row needs a string \"prompt\"")
                prompts.append(row["prompt"])
    elif suffix in (".csv", ".parquet"):
        import pandas as pd

        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        if "prompt" not in frame.columns:
            raise typer.BadParameter(f"{path}: no 'prompt' column (columns: {', '.join(map(str, frame.columns))})")
        prompts = [str(p) for p in frame["prompt"]]
    elif suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise typer.BadParameter(f"{path}: expected a JSON list of prompt strings")
        prompts = data
    else:
        raise typer.BadParameter(f"{path}: prompts must be .txt, .jsonl, .csv, .parquet or .json")
    if not prompts:
        raise typer.BadParameter(f"{path}: no prompts")
    return prompts


def load_pipeline(source: str, device: str, dtype: str):
    """A diffusers pipeline from a hub id or local folder, on ``device`` in ``dtype``, progress bar off."""
    from diffusers import DiffusionPipeline

    from .. import hub
    from ..base import resolve_dtype
    from ..errors import ModelSourceError

    if not hub.is_local(source) and not hub.hub_reachable():
        try:  # offline: only the hub cache can hold it; say so instead of diffusers' "see the stacktrace above"
            source = str(hub.local_dir(source, ["*"], what="diffusers pipeline"))
        except ModelSourceError as exc:
            raise typer.BadParameter(f"--pipeline: {exc}") from None
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=resolve_dtype(dtype))
    except Exception as exc:  # OSError, ValueError, SafetensorError, ...: diffusers raises many kinds
        raise typer.BadParameter(f"--pipeline {source}: cannot load a diffusers pipeline ({exc})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _fail(exc: Exception) -> None:
    err_console.print(f"[red]error:[/] {escape(str(exc))}")
    raise typer.Exit(2)


def _pipeline_kwargs(steps: Optional[int], guidance: Optional[float], height: Optional[int], width: Optional[int]) -> dict:
    kw = {"num_inference_steps": steps, "guidance_scale": guidance, "height": height, "width": width}
    return {k: v for k, v in kw.items() if v is not None}


def register(app: typer.Typer) -> None:
    """Add ``generate`` and ``finetune`` to the ``prefscore`` app."""

    @app.command("generate")
    def generate_cmd(
        pipeline: str = typer.Option(..., "--pipeline", help="diffusers pipeline: hub id or local folder."),
        prompts: Path = typer.Option(..., "--prompts", help="Prompts: .txt (one per line), .jsonl/.csv/.parquet (prompt), .json list."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (images/, chosen/, candidates.jsonl/.csv, chosen.jsonl)."),
        metric: Optional[str] = typer.Option(None, "--metric", "-m", help="Metric that ranks the candidates (e.g. imagereward)."),
        model: Optional[str] = typer.Option(None, "--model", help="The metric's model source (hub id or local folder)."),
        composite: Optional[Path] = typer.Option(None, "--composite", help="Rank by a calibrated composite (calibration JSON) instead."),
        output: Optional[str] = typer.Option(None, "--output", help="Output column of a multi-output metric (e.g. quality)."),
        option: List[str] = typer.Option([], "--option", help="Metric option KEY=VALUE (JSON value)."),
        n: int = typer.Option(8, "--n", help="Candidates per prompt (best-of-N), or the most drawn with --threshold."),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Rejection sampling: stop at the first candidate scoring at least this."),
        seed: int = typer.Option(0, help="Base seed; candidate j of prompt i uses seed + i*100000 + j."),
        batch_size: int = typer.Option(4, help="Images per pipeline call."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (pipeline default if unset)."),
        guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
        height: Optional[int] = typer.Option(None, help="Image height in pixels."),
        width: Optional[int] = typer.Option(None, help="Image width in pixels."),
        device: str = typer.Option("cpu", help="Torch device for the pipeline and the metric."),
        dtype: str = typer.Option("float32", help="Pipeline dtype (the metric runs in float32)."),
    ) -> None:
        """Reward-guided sampling: best-of-N (or rejection sampling with --threshold) by a prefscore metric."""
        import prefscore

        from .sampling import best_of_n, rejection_sample

        if (metric is None) == (composite is None):
            raise typer.BadParameter("give exactly one of --metric NAME or --composite CALIBRATION.json")
        from ..errors import PrefscoreError

        texts = read_prompts(prompts)
        try:
            if composite is not None:
                scorer = prefscore.load("composite", model=str(composite), device=device)
            else:
                opts = parse_options(option, [metric]).get(metric, {})
                scorer = prefscore.load(metric, model=model, device=device, **opts)
        except (PrefscoreError, ValueError, TypeError) as exc:  # a metric that cannot be loaded: say which and why
            _fail(exc)
        pipe = load_pipeline(pipeline, device, dtype)
        kwargs = _pipeline_kwargs(steps, guidance, height, width)
        if threshold is None:
            results = best_of_n(pipe, texts, scorer, n, seed=seed, batch_size=batch_size, output=output, out_dir=out,
                                progress=True, **kwargs)
        else:
            results = rejection_sample(pipe, texts, scorer, threshold, n, seed=seed, batch_size=batch_size,
                                       output=output, out_dir=out, progress=True, **kwargs)
        table = Table(title=f"{'best-of-' + str(n) if threshold is None else 'rejection sampling'} by {scorer.name}")
        for c in ("prompt", "chosen", "score", "candidates", "min", "max", "accepted"):
            table.add_column(c, overflow="fold")
        for r in results:
            s = r.scores
            table.add_row(escape(r.prompt), f"#{r.best.index} (seed {r.best.seed})", f"{r.best.score:.4g}",
                          str(len(r.candidates)), f"{s.min():.4g}", f"{s.max():.4g}", "yes" if r.accepted else "no")
        console.print(table)
        err_console.print(f"wrote {out}/candidates.jsonl, candidates.csv, chosen.jsonl and the images")

    @app.command("finetune")
    def finetune_cmd(
        pipeline: str = typer.Option(..., "--pipeline", help="Stable-Diffusion-style diffusers pipeline: hub id or folder."),
        prompts: Path = typer.Option(..., "--prompts", help="Training prompts (.txt/.jsonl/.csv/.parquet/.json)."),
        out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints/, lora/, logs); an existing run resumes."),
        reward: Optional[str] = typer.Option(None, "--reward", "-r", help="Reward: metric name, NAME.OUTPUT, or 0.7*hpsv2+0.3*laion-aesthetic."),
        model: Optional[str] = typer.Option(None, "--model", help="Model source for the reward metric(s)."),
        composite: Optional[Path] = typer.Option(None, "--composite", help="Optimise a calibrated composite (calibration JSON)."),
        held_out: List[str] = typer.Option([], "--held-out", help="Metric tracked but not optimised (repeat); NAME or NAME=SOURCE."),
        method: str = typer.Option("refl", help="refl (one-step x0 at a late step) or draft (backprop through the last K steps)."),
        train_steps: int = typer.Option(100, "--train-steps", help="Optimizer steps."),
        batch_size: int = typer.Option(2, help="Prompts per batch."),
        grad_accum: int = typer.Option(1, help="Batches per optimizer step."),
        lr: float = typer.Option(1e-5, help="AdamW learning rate of the LoRA weights."),
        inference_steps: int = typer.Option(40, help="Denoising steps of the training chain."),
        refl_steps: str = typer.Option("30,39", help="ReFL: inclusive range of the step index that gets the gradient."),
        draft_k: int = typer.Option(1, help="DRaFT: steps with gradients at the end of the chain."),
        guidance: float = typer.Option(7.5, help="Classifier-free guidance scale during training."),
        grad_scale: float = typer.Option(1e-3, help="Multiplies the reward loss (ReFL: 1e-3)."),
        reward_target: float = typer.Option(2.0, help="ReFL: loss relu(target - reward)."),
        pretrain_data: Optional[Path] = typer.Option(None, help="JSONL of {image, prompt} for the pre-training (denoising) loss."),
        pretrain_weight: float = typer.Option(1.0, help="Weight of the pre-training loss."),
        scheduler: Optional[str] = typer.Option(None, help="Training sampler: ddpm or ddim (default: ddpm for refl, ddim for draft)."),
        lora_rank: int = typer.Option(4, help="LoRA rank."),
        lora_alpha: float = typer.Option(4.0, help="LoRA alpha (scale alpha/rank)."),
        height: Optional[int] = typer.Option(None, help="Training image height (default: the UNet's size)."),
        width: Optional[int] = typer.Option(None, help="Training image width."),
        eval_every: int = typer.Option(10, help="Steps between held-out evaluations."),
        eval_prompts: Optional[Path] = typer.Option(None, help="Evaluation prompts (default: the first 4 training prompts)."),
        checkpoint_every: int = typer.Option(50, help="Steps between checkpoints."),
        seed: int = typer.Option(0, help="Seed of prompts, noise and LoRA init."),
        device: str = typer.Option("cpu", help="Torch device."),
        dtype: str = typer.Option("float32", help="Dtype of the frozen pipeline parts (LoRA weights train in float32)."),
        resume: bool = typer.Option(True, help="Resume from the run folder's latest checkpoint."),
    ) -> None:
        """Reward fine-tuning (ReFL or DRaFT-K) of LoRA adapters on the UNet, with held-out tracking."""
        import warnings

        from .finetune import FinetuneConfig, RewardFinetuner, RewardHackingWarning
        from .lora import LoraSettings
        from .rewards import load_reward

        if (reward is None) == (composite is None):
            raise typer.BadParameter("give exactly one of --reward NAME or --composite CALIBRATION.json")
        try:
            lo, hi = (int(v) for v in refl_steps.split(","))
        except ValueError:
            raise typer.BadParameter(f"--refl-steps {refl_steps!r}: expected two integers LOW,HIGH") from None
        from ..errors import PrefscoreError

        texts = read_prompts(prompts)
        try:
            target = load_reward(reward or "", model, str(composite) if composite else None, device)
            tracked = []
            for item in held_out:
                name, _, source = item.partition("=")
                tracked.append(load_reward(name.strip(), source.strip() or None, None, device))
        except (PrefscoreError, ValueError, TypeError) as exc:  # a reward metric that cannot be loaded
            _fail(exc)
        config = FinetuneConfig(method=method, steps=train_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                                num_inference_steps=inference_steps, refl_steps=(lo, hi), draft_k=draft_k,
                                guidance_scale=guidance, reward_target=reward_target, grad_scale=grad_scale,
                                pretrain_weight=pretrain_weight, scheduler=scheduler, height=height, width=width,
                                lora=LoraSettings(rank=lora_rank, alpha=lora_alpha), eval_every=eval_every,
                                checkpoint_every=checkpoint_every, seed=seed)
        pipe = load_pipeline(pipeline, device, dtype)
        tuner = RewardFinetuner(pipe, target, texts, config, out, held_out=tracked,
                                eval_prompts=read_prompts(eval_prompts) if eval_prompts else None,
                                pretrain_data=pretrain_data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RewardHackingWarning)  # reported below
            try:
                result = tuner.train(progress=True, resume=resume)
            except PrefscoreError as exc:  # e.g. a checkpoint in the run folder that is refused
                _fail(exc)
        table = Table(title=f"{method} on {target.name}: held-out evaluation (means over the eval images)")
        names = list(result.evaluations[-1]["means"])
        table.add_column("step", justify="right")
        for name in names:
            table.add_column(name, justify="right")
        for e in result.evaluations:
            table.add_row(str(e["step"]), *(f"{e['means'][k]:.4g}" for k in names))
        console.print(table)
        for f in result.findings:
            err_console.print(f"[bold yellow]warning[/] {escape(f['message'])} (step {f['step']})")
        err_console.print(f"LoRA adapter: {result.lora_dir} (pipeline.load_lora_weights); logs and checkpoints in {out}")
