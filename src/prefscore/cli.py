"""The ``prefscore`` command line: ``metrics``, ``score`` (and the commands of the feature modules)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .annotate.cli import register as register_annotate
from .bench.cli import register as register_bench
from .cli_args import parse_models, parse_options, split_names
from .errors import PrefscoreError, PromptTruncationWarning
from .evaluation.cli import register as register_evaluation
from .generation.cli import register as register_generation
from .registry import get_spec, list_metrics, load
from .training.cli import register as register_training

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Aesthetic and human-preference scores for images.")
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"prefscore {__version__}")
        raise typer.Exit()


#: exit code of `prefscore score` when it finished but some rows are error rows (0: every row scored)
EXIT_FAILED_ROWS = 3


def _max_pixels(value: Optional[int]) -> Optional[int]:
    if value is not None:
        from .images import set_max_pixels

        try:
            set_max_pixels(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


MAX_PIXELS_HELP = ("Largest image (width x height) to decode; larger ones are error rows (decompression-bomb guard; "
                   "default 178956970, Pillow's limit). Raise it for real panoramas.")


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
         max_pixels: Optional[int] = typer.Option(None, "--max-pixels", callback=_max_pixels, help=MAX_PIXELS_HELP + " Applies to every command.")) -> None:
    """prefscore: score images with published aesthetic and preference models."""


def check_output(output: Path, resume: bool, overwrite: bool) -> None:
    """Before any model loads: the output's format is known, it may be written (refused if it exists
    unless resuming or overwriting), and its folder is writable."""
    import os
    import tempfile

    from .output import output_format, parts_dir

    output_format(output)
    if output.is_dir():
        raise typer.BadParameter(f"--output {output} is a folder; give a file name ending in .jsonl, .csv or .parquet")
    exists = output.exists() or parts_dir(output).is_dir()
    if exists and not (resume or overwrite):
        raise typer.BadParameter(f"--output {output} already exists: pass --resume to continue it or --overwrite to replace it")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
        if output.exists() and not os.access(output, os.W_OK):
            raise PermissionError(f"{output} is read-only")
    except OSError as exc:
        raise typer.BadParameter(f"cannot write --output {output}: {exc.strerror or exc}") from None


def _range(spec) -> str:
    lo, hi = spec.output_range
    f = lambda x: "-inf" if x == -math.inf else ("inf" if x == math.inf else f"{x:g}")  # noqa: E731
    return f"[{f(lo)}, {f(hi)}]"


# Below this many columns the six-column table wraps every header into fragments: print one block per metric.
WIDE_TABLE_COLUMNS = 120


@app.command("metrics")
def metrics_cmd(as_json: bool = typer.Option(False, "--json", help="Print the registry as JSON.")) -> None:
    """List the metrics: inputs, range, direction, default weights and their licence, strength and caveat."""
    specs = list_metrics()
    if as_json:
        console.print_json(json.dumps([s.as_dict() for s in specs]))
        return
    if console.width < WIDE_TABLE_COLUMNS:
        wrap = lambda text, first="  ": textwrap.fill(text, console.width - 1, initial_indent=first,  # noqa: E731
                                                      subsequent_indent="      ", break_on_hyphens=False)
        for s in specs:
            better = "higher" if s.higher_is_better else "lower"
            console.print(f"[bold]{s.name}[/bold]", highlight=False)
            for line in (f"{s.inputs}; range {_range(s)}, typically {s.typical}; {better} is better",
                         f"weights: {s.default_model}", f"licence: {s.weights_license}",
                         f"+ {s.strength}", f"- {s.caveat}"):
                console.print(wrap(line), highlight=False, markup=False, soft_wrap=True)
            console.print()
        return
    table = Table(title="prefscore metrics", show_lines=True)
    table.add_column("name", no_wrap=True, style="bold")
    for col in ("inputs", "range (typical)", "better", "default model", "weights licence", "strength / caveat"):
        table.add_column(col, overflow="fold")
    for s in specs:
        table.add_row(s.name, s.inputs, f"{_range(s)}\n{s.typical}", "higher" if s.higher_is_better else "lower",
                      s.default_model, s.weights_license, f"+ {s.strength}\n- {s.caveat}")
    console.print(table)


@app.command("score")
def score_cmd(
    paths: List[Path] = typer.Argument(None, help="Image files and/or folders (searched recursively)."),
    metric: List[str] = typer.Option(..., "--metric", "-m", help="Metric name or trained model directory (repeat, or comma-separate, for several)."),
    model: List[str] = typer.Option([], "--model", help="Model source: hub id or local directory (METRIC=SRC with several metrics)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="One prompt for every image."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="CSV/JSONL/Parquet with columns image, prompt."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write rows to FILE.jsonl, .csv or .parquet."),
    option: List[str] = typer.Option([], "--option", help="Metric option KEY=VALUE (JSON value) or METRIC.KEY=VALUE."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("float32", help="float32 (parity default), float16 or bfloat16."),
    batch_size: int = typer.Option(16, help="Images per forward pass."),
    resume: bool = typer.Option(False, help="Continue --output: skip (image, prompt) rows already there, score missing metrics."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output (without it an existing file is refused)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", callback=_max_pixels, help=MAX_PIXELS_HELP),
    recursive: bool = typer.Option(True, help="Search folders recursively."),
    engine: str = typer.Option("local", help="local (this process) or ray (Ray Data actor pool; writes a Parquet folder)."),
    workers: Optional[int] = typer.Option(None, help="Decode threads (default min(8, CPUs); 0 = decode in the main thread)."),
    prefetch: int = typer.Option(2, help="Batches decoded ahead of the forward pass (bounds memory)."),
    autocast: Optional[str] = typer.Option(None, help="Run image towers under autocast: bf16 or fp16 (default fp32, the parity setting)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the image towers (pays off on long runs)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Feature cache folder: image-tower features keyed by model and image content."),
    source: List[str] = typer.Option([], "--source", help="Ray engine: extra sources as URLs (s3://, gs://, hf://...): folders, Parquet, WebDataset .tar."),
    prompt_column: Optional[str] = typer.Option(None, help="Ray engine: column holding the prompt (Parquet: prompt; WebDataset: txt)."),
    image_column: str = typer.Option("image", help="Ray engine: Parquet column with image bytes or paths."),
    concurrency: int = typer.Option(1, help="Ray engine: number of actors (one model set each)."),
    gpus_per_actor: float = typer.Option(0.0, help="Ray engine: GPUs per actor (>0 scores on CUDA)."),
) -> None:
    """Score images with one or several metrics; one row per image and prompt, errors as rows, never lost.

    Exit status: 0 every row scored, 3 finished with error rows (listed), 2 bad arguments or inputs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    import warnings

    from .images import find_images
    from .output import image_key
    from .scoring import ScoreJob, read_prompt_pairs

    names = split_names(metric)
    try:
        # a metric is a registry name, or a model directory written by `prefscore train` (its column: the folder name)
        model_dirs = {Path(n).name: n for n in names if Path(n).is_dir()}
        names = [Path(n).name if Path(n).is_dir() else get_spec(n).name for n in names]
        if prompt is not None and prompts is not None:
            raise typer.BadParameter("give --prompt or --prompts, not both")
        aware = [n for n in names if n not in model_dirs and get_spec(n).prompt_aware]
        if aware and prompt is None and prompts is None:
            raise typer.BadParameter(f"metric(s) {', '.join(aware)} score an image against a prompt: give --prompt TEXT or --prompts FILE")
        if resume and overwrite:
            raise typer.BadParameter("give --resume or --overwrite, not both")
        if output is not None and engine == "local":
            check_output(output, resume, overwrite)
        pairs = read_prompt_pairs(prompts) if prompts is not None else None
        if not paths and pairs is None and not source:
            raise typer.BadParameter("no images: give PATHS or a --prompts file listing them")
        models = parse_models(model, names)
        options = parse_options(option, names)
        from .engine.local import EngineOptions

        engine_options = EngineOptions(batch_size=batch_size, workers=workers, prefetch=prefetch, autocast=autocast,
                                       compile=compile, cache=cache)
        if engine == "ray":
            from .engine.ray import run_from_cli

            summary = run_from_cli([str(p) for p in paths or []] + list(source), output, [model_dirs.get(n, n) for n in names],
                                   models, {model_dirs.get(n, n): options[n] for n in names}, prompt, prompts, prompt_column, image_column, concurrency,
                                   gpus_per_actor, dtype, engine_options, resume)
            err_console.print(f"wrote {summary['rows']} rows to {summary['output']}")
            err_console.print(f"{summary['rows'] - summary['failed']} scored, {summary['failed']} failed")
            return
        if engine != "local":
            raise typer.BadParameter(f"--engine must be local or ray, not {engine!r}")
        loaded = {}
        for n in names:
            with err_console.status(f"loading {n}..."):
                if n in model_dirs:
                    loaded[n] = load(model_dirs[n], device=device, dtype=dtype, **options[n])
                else:
                    loaded[n] = load(n, model=models.get(n), device=device, dtype=dtype, **options[n])
        suffixes = frozenset().union(*(m.input_suffixes for m in loaded.values()))
        images, skipped = find_images(paths, recursive, suffixes) if paths else ([Path(p) for p, _ in pairs], [])
        if skipped:
            shown = ", ".join(str(s) for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            err_console.print(f"[yellow]skipped {len(skipped)} path(s) without an image suffix (or links to a folder "
                              f"already searched):[/] {shown}")
        if not images:
            raise typer.BadParameter("no image files found")
        row_prompts = prompt
        if pairs is not None and not paths:
            row_prompts = [pr for _, pr in pairs]
        elif pairs is not None:  # each image found, once per prompt the file lists for it (an error row if none)
            listed: dict[str, list[str]] = {}
            for image, pr in pairs:
                listed.setdefault(image, []).append(pr)
            expanded = [(image, pr) for image in images for pr in listed.get(image_key(str(image)), [None])]
            images, row_prompts = [i for i, _ in expanded], [pr for _, pr in expanded]
        job = ScoreJob(loaded, batch_size=batch_size, options=engine_options)
        with Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err_console) as bar, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptTruncationWarning)
            task = bar.add_task("score", total=len(images))
            rows = job.run(images, row_prompts, output, resume, progress=lambda k: bar.advance(task, k))
        for note in job.notes:
            err_console.print(f"[yellow]{escape(note)}[/]")
        for w in caught:
            if issubclass(w.category, PromptTruncationWarning):
                err_console.print(f"[yellow]warning:[/] {escape(str(w.message))}")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except PrefscoreError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except (ValueError, TypeError, FileNotFoundError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    bad = [r for r in rows if r.get("error")]
    for r in bad:
        err_console.print(f"[red]error[/] {escape(str(r['image']))}: {escape(str(r['error']))}")
    if output is None:
        for r in rows:
            console.print_json(json.dumps({k: v for k, v in r.items() if v is not None}))
    else:
        err_console.print(f"wrote {len(rows)} rows to {output}")
    err_console.print(f"{len(rows) - len(bad)} scored, {len(bad)} failed")
    if bad:
        raise typer.Exit(EXIT_FAILED_ROWS)


register_training(app)
register_evaluation(app)
register_bench(app)
register_generation(app)
register_annotate(app)
