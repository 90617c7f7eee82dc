"""``prefscore train``: fit a preference or rating model on human judgements."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import PrefscoreError


def _layers(value: Optional[str], name: str) -> Optional[int]:
    if value is None or value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"{name} is 'all' or a number of last layers, not {value!r}") from None


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the main Typer app."""

    @app.command("train")
    def train_command(
        data: Path = typer.Argument(..., help="Judgements: CSV/TSV, JSONL or Parquet of pairs, rankings or ratings (paths relative to the file)."),
        out: Path = typer.Option(..., "--out", "-o", help="Model directory to write (prefscore.load(DIR) scores with it)."),
        objective: str = typer.Option("pairwise", help="pairwise (Bradley-Terry, ties as 0.5/0.5), choice (softmax over k candidates) or rating (MSE)."),
        backbone: str = typer.Option("stats", help="'stats' (weight-free image statistics) or a CLIP folder / hub id."),
        processor: Optional[str] = typer.Option(None, help="Folder or hub id with the CLIP tokenizer and preprocessor_config.json, if not with the weights."),
        head: str = typer.Option("linear", help="linear or mlp (fast path)."),
        hidden: str = typer.Option("256,64", help="MLP layer widths, comma-separated."),
        dropout: float = typer.Option(0.1, help="MLP dropout."),
        features: str = typer.Option("auto", help="auto, image or image+text (prompt-aware CLIP heads)."),
        finetune: bool = typer.Option(False, "--finetune", help="Fine-tune the CLIP backbone (full path) instead of training a head."),
        val: Optional[Path] = typer.Option(None, help="Separate validation file (default: hold out prompts of DATA)."),
        val_fraction: float = typer.Option(0.1, help="Share of prompts held out for validation."),
        seed: int = typer.Option(0, help="Seed of the split, initialisation, shuffling and bootstrap."),
        lr: Optional[float] = typer.Option(None, help="Learning rate (default 1e-3 for heads, 1e-6 for fine-tuning)."),
        weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (default 1e-4 for heads, 0 for fine-tuning)."),
        batch_size: Optional[int] = typer.Option(None, help="Examples per step (default 256 for heads, 16 pairs for fine-tuning)."),
        epochs: int = typer.Option(300, help="Most epochs (heads)."),
        patience: int = typer.Option(20, help="Early stopping: epochs (heads) or evaluations (fine-tuning) without a better validation loss."),
        temperature: float = typer.Option(1.0, help="tau of the preference probability sigmoid((s_a - s_b) / tau)."),
        margin: float = typer.Option(0.0, help="Margin added to every strict pair (score units)."),
        device: str = typer.Option("cpu", help="torch device."),
        cache_dir: Optional[Path] = typer.Option(None, help="Embedding cache (default $PREFSCORE_CACHE/embeddings)."),
        bootstrap: int = typer.Option(1000, help="Bootstrap replicates of the validation CI."),
        max_steps: int = typer.Option(4000, help="Fine-tuning: optimizer steps."),
        warmup_steps: int = typer.Option(500, help="Fine-tuning: linear warm-up steps."),
        schedule: str = typer.Option("constant", help="Fine-tuning: constant or cosine after warm-up."),
        grad_accum: int = typer.Option(1, help="Fine-tuning: micro-batches per optimizer step."),
        precision: str = typer.Option("fp32", help="Fine-tuning: fp32, bf16 or fp16 (GPU)."),
        vision_layers: Optional[str] = typer.Option(None, help="Fine-tuning: trainable last vision layers ('all' default, 0 = frozen)."),
        text_layers: Optional[str] = typer.Option(None, help="Fine-tuning: trainable last text layers ('all' default, 0 = frozen)."),
        fixed_logit_scale: bool = typer.Option(False, "--fixed-logit-scale", help="Fine-tuning: keep CLIP's temperature fixed."),
        checkpoint_every: int = typer.Option(500, help="Fine-tuning: checkpoint every N steps."),
        eval_every: int = typer.Option(250, help="Fine-tuning: validate every N steps."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Fine-tuning: continue from the latest checkpoint in OUT."),
        stop_after: Optional[int] = typer.Option(None, help="Fine-tuning: stop this run after N steps (resume later)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """Train a preference (pairs, rankings) or rating model and write a model directory with its card."""
        from rich.console import Console

        from .finetune import FinetuneConfig
        from .heads import HeadConfig
        from .trainer import TrainConfig, train

        console = Console(stderr=True)
        try:
            widths = tuple(int(x) for x in hidden.split(",") if x.strip())
        except ValueError:
            raise typer.BadParameter(f"--hidden takes comma-separated integers, not {hidden!r}") from None
        try:
            ft = None
            if finetune:
                ft = FinetuneConfig(
                    lr=lr if lr is not None else 1e-6, weight_decay=weight_decay if weight_decay is not None else 0.0,
                    warmup_steps=warmup_steps, schedule=schedule, max_steps=max_steps,
                    batch_size=batch_size or 16, grad_accum=grad_accum, precision=precision,
                    vision_layers=_layers(vision_layers, "--vision-layers"), text_layers=_layers(text_layers, "--text-layers"),
                    logit_scale="fixed" if fixed_logit_scale else "learn", checkpoint_every=checkpoint_every,
                    eval_every=eval_every, resume=resume, stop_after=stop_after,
                )
            config = TrainConfig(
                objective=objective, backbone=backbone, processor=processor, head=HeadConfig(head, widths, dropout),
                features=features, temperature=temperature, margin=margin,
                lr=lr if lr is not None else 1e-3, weight_decay=weight_decay if weight_decay is not None else 1e-4,
                batch_size=batch_size or 256, max_epochs=epochs, patience=patience, val_fraction=val_fraction,
                seed=seed, device=device, cache_dir=str(cache_dir) if cache_dir else None, bootstrap=bootstrap, finetune=ft,
            )
            result = train(data, out, config, val=val, progress=not quiet)
        except (PrefscoreError, ValueError, OSError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        if result is None:
            console.print(f"stopped after {stop_after} steps as asked; run the same command again to resume from {out}/checkpoints")
            return
        m = result.metrics
        lines = [f"model written to {result.out} ({result.meta['stopped']}, best {result.meta['best']})"]
        if m.get("pairwise_accuracy") is not None:
            from .report import accuracy_ci_text

            lines.append(f"validation pairwise accuracy {m['pairwise_accuracy']:.3f} ({accuracy_ci_text(m)}, {m['strict_pairs']} pairs)")
        if m.get("tie_aware_accuracy") is not None:
            lines.append(f"tie-aware accuracy {m['tie_aware_accuracy']:.3f} (chance {m['tie_chance']:.3f}, threshold {result.meta['tie_threshold']})")
        if m.get("srcc") is not None:
            lines.append(f"validation SRCC {m['srcc']:.3f}, PLCC {m['plcc']:.3f}, RMSE {m['rmse']:.3f}")
        typer.echo("\n".join(lines))
