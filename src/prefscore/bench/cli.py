"""``prefscore bench``: reproduce the published benchmark tables. Wire in with ``register(app)``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..cli_args import parse_models, parse_options, parse_pairs, split_names

console = Console()
err_console = Console(stderr=True)


def _fmt(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


def print_result(result) -> None:
    """The benchmark table (ours with CI beside the published figure) and the run's notes."""
    from ..evaluation.agreement import resampling_label

    level = result.evaluation.settings.get("level", 0.95)
    table = Table(title=f"{result.dataset}: agreement with human judgements ({level:.0%} bootstrap CI, "
                        f"{resampling_label(result.evaluation.settings)}) vs published")
    for c in ("metric", "statistic", "ours", f"{level:.0%} CI", "n / units", "published", "diff", "status", "source"):
        table.add_column(c, justify="right" if c in ("ours", "published", "diff", "n / units") else "left")
    for r in result.rows:
        f = r.published
        status = r.status
        style = {"outside CI": "[bold red]outside CI[/]", "within CI": "[green]within CI[/]"}.get(status, status)
        table.add_row(r.metric, r.statistic, _fmt(r.estimate), f"[{_fmt(r.low)}, {_fmt(r.high)}]" if math.isfinite(r.low) else "n/a", f"{r.n} / {r.units}",
                      _fmt(f.value) if f else "–", f"{r.estimate - f.value:+.3f}" if f and math.isfinite(r.estimate) else "",
                      style, escape(f"[{f.tag}]") if f else "")
    console.print(table)
    conditions = {f"{r.metric} {r.statistic}": r.published.condition for r in result.rows
                  if r.published is not None and r.published.condition}
    for what, cond in conditions.items():
        err_console.print(f"[dim]published {escape(what)}: {escape(cond)}[/]")
    for n in result.notes:
        err_console.print(f"[dim]note: {escape(n)}[/]")


def print_datasets() -> None:
    from .adapters import DATASETS
    from .published import for_dataset

    table = Table(title="prefscore bench data sets", show_lines=True)
    for c in ("name", "what", "hub", "published figures"):
        table.add_column(c, overflow="fold")
    for spec in DATASETS.values():
        figs = ", ".join(escape(f"{f.metric} {f.statistic} {f.value:.3f} [{f.tag}]") for f in for_dataset(spec.name))
        table.add_row(spec.name, spec.summary, spec.hub or "(local folder)", figs or "–")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the ``prefscore`` app."""

    @app.command("bench")
    def bench_cmd(
        dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="NAME[:PATH] - a benchmark set and its local folder (see --list); Pick-a-Pic is downloaded from the hub without PATH."),
        metrics: List[str] = typer.Option([], "--metrics", "-m", help="Metrics (comma-separated or repeated): registry names scored here, or columns of --scores."),
        model: List[str] = typer.Option([], "--model", help="METRIC=SRC: model source (hub id or local folder) of a metric."),
        option: List[str] = typer.Option([], "--option", help="METRIC.KEY=VALUE metric option (JSON value), e.g. clip-iqa.backbone=rn50."),
        scores: Optional[Path] = typer.Option(None, "--scores", help="Precomputed scores (CSV/JSONL/Parquet): 'image' = item id (path under the image folder, or Pick-a-Pic image uid) and one column per metric."),
        dataset_option: List[str] = typer.Option([], "--dataset-option", help="KEY=VALUE for the data set reader: images=DIR, split=test (koniq10k), test_list=FILE (ava)."),
        temperature: List[str] = typer.Option([], "--temperature", help="COLUMN=TAU for Pick-a-Pic's tie rule with precomputed scores."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N records per split (smoke test; not the published protocol)."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap replicates for the CIs."),
        level: float = typer.Option(0.95, "--level", help="CI coverage."),
        seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the table as CSV here."),
        save_dir: Optional[Path] = typer.Option(None, "--save-dir", help="Also save the full evaluation (every statistic, paired tests, item scores) in this folder."),
        device: str = typer.Option("cpu", help="Torch device."),
        dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
        batch_size: Optional[int] = typer.Option(None, help="Images per forward pass (default: the metric's)."),
        chunk_size: int = typer.Option(256, help="Images decoded and held at a time."),
        list_sets: bool = typer.Option(False, "--list", help="List the data sets and their published figures."),
    ) -> None:
        """Reproduce the published benchmark tables: score a benchmark set with each paper's protocol
        and print each figure with its bootstrap CI beside the published one."""
        from ..errors import PrefscoreError
        from ..evaluation.scores import ScoreLookupError, read_table
        from .adapters import get_dataset, resolve_path
        from .runner import BenchConfig, run_bench

        if list_sets:
            print_datasets()
            return
        if not dataset:
            raise typer.BadParameter("give --dataset NAME[:PATH] (or --list)")
        names = split_names(metrics)
        if not names:
            raise typer.BadParameter("give --metrics NAME[,NAME...]")
        try:
            name, _, path = dataset.partition(":")
            spec = get_dataset(name)
            bench = spec.load(resolve_path(spec, path or None), parse_pairs(dataset_option, "--dataset-option"))
            if limit is not None:
                bench = bench.head(limit)
            file_columns = []
            if scores is not None:
                available = set(map(str, read_table(scores.expanduser()).columns))
                file_columns = [n for n in names if n in available]
            to_score = [n for n in names if n not in file_columns]
            config = BenchConfig(n_boot=bootstrap, level=level, seed=seed, device=device, dtype=dtype,
                                 batch_size=batch_size, chunk_size=chunk_size,
                                 temperatures=parse_pairs(temperature, "--temperature", float))
            if to_score:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                with Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                              console=err_console) as bar:
                    task = bar.add_task("score", total=len(bench.item_keys()))
                    result = run_bench(bench, to_score, models=parse_models(model, names), options=parse_options(option, names),
                                       scores=scores, score_columns=file_columns, config=config,
                                       progress=lambda n: bar.advance(task, n))
            else:
                result = run_bench(bench, (), scores=scores, score_columns=file_columns, config=config)
            print_result(result)
            if output is not None:
                result.to_csv(output)
                err_console.print(f"wrote {output}")
            if save_dir is not None:
                paths = result.evaluation.save(save_dir)
                err_console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
        except (PrefscoreError, ScoreLookupError, ValueError, KeyError, FileNotFoundError, TypeError, OSError, ImportError) as exc:
            err_console.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2)
