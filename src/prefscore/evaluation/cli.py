"""``prefscore evaluate``, ``prefscore calibrate`` and ``prefscore report``.

Wire into the main app with ``register(app)``.
"""

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


def _fail(exc: Exception) -> None:
    err_console.print(f"[red]error:[/] {escape(str(exc))}")
    raise typer.Exit(2)


def _ci(est, low, high, boot: bool = False) -> str:
    """``est [low, high]``; without an interval ``est`` (``est [CI n/a]`` when a bootstrap was asked for)."""
    if est is None or not math.isfinite(est):
        return "–"
    if low is None or not math.isfinite(low):
        return f"{est:.3f} [CI n/a]" if boot else f"{est:.3f}"
    return f"{est:.3f} [{low:.3f}, {high:.3f}]"


def _p(p) -> str:
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.4f}"


def print_evaluation(result) -> None:
    """Rich tables of an EvaluationResult: overall agreement, paired tests, notes."""
    from .agreement import resampling_label

    t = result.table
    overall = t[t.group == "all"]
    stats = list(dict.fromkeys(overall.statistic))
    level = result.settings.get("level", 0.95)
    boot = bool(result.settings.get("n_boot"))
    table = Table(title=f"Agreement with human {result.kind} ({level:.0%} bootstrap CI, {resampling_label(result.settings)})")
    table.add_column("metric")
    for s in stats:
        table.add_column(s, justify="right")
    table.add_column("n / units", justify="right")
    for m in result.metrics:
        rows = overall[overall.metric == m]
        cells = []
        for s in stats:
            r = rows[rows.statistic == s]
            cells.append(_ci(r.iloc[0].estimate, r.iloc[0].low, r.iloc[0].high, boot) if not r.empty else "–")
        table.add_row(m, *cells, f"{int(rows.n.max())} / {int(rows.units.max())}")
    console.print(table)
    if len(result.tests):
        tt = Table(title="Paired bootstrap tests (metric_a - metric_b)")
        for c in ("statistic", "metric_a", "metric_b", "difference [CI]", "p"):
            tt.add_column(c, justify="right" if c in ("difference [CI]", "p") else "left")
        for r in result.tests.itertuples():
            tt.add_row(r.statistic, r.metric_a, r.metric_b, _ci(r.difference, r.low, r.high, boot), _p(r.p_value))
        console.print(tt)
    groups = [g for g in dict.fromkeys(t.group) if g != "all"]
    for g in groups:
        sub = t[t.group == g]
        bt = Table(title=f"By {g}")
        bt.add_column(g)
        bt.add_column("metric")
        for s in stats:
            bt.add_column(s, justify="right")
        bt.add_column("resampled")
        for (level_, metric), frame in sub.groupby(["level", "metric"], sort=False):
            cells = []
            for s in stats:
                r = frame[frame.statistic == s]
                cells.append(_ci(r.iloc[0].estimate, r.iloc[0].low, r.iloc[0].high, boot) if not r.empty else "–")
            bt.add_row(str(level_), metric, *cells, _resampled(frame.iloc[0], boot))
        console.print(bt)
    for n in result.notes:
        err_console.print(f"[dim]note: {escape(n)}[/]")


def _resampled(row, boot: bool) -> str:
    """A breakdown row's resampling: ``12 prompts``, ``9 records`` or ``n/a``."""
    if not boot:
        return "–"
    return f"{int(row.resampled_units)} {row.resampled}s" if row.resampled else "n/a"


def print_findings(findings) -> None:
    for f in findings:
        colour = "yellow" if f.severity == "warning" else "blue"
        err_console.print(f"[{colour}]{f.severity}[/] {escape(f'[{f.kind}]')} {escape(f.message)}")


def register(app: typer.Typer) -> None:
    """Add ``evaluate``, ``calibrate`` and ``report`` to the ``prefscore`` app."""

    @app.command("evaluate")
    def evaluate_cmd(
        judgements: Path = typer.Argument(..., help="Human judgements: pairs (image_a, image_b, label a/b/tie), rankings (images, ranks) or ratings (image, score); CSV/JSONL/Parquet."),
        images: Optional[Path] = typer.Option(None, "--images", help="Folder the relative image paths refer to (default: the judgement file's folder)."),
        metric: List[str] = typer.Option([], "--metric", "-m", help="Registry metric to score on the fly (repeat or comma-separate)."),
        model: List[str] = typer.Option([], "--model", help="Model source METRIC=SRC (or SRC with one metric)."),
        option: List[str] = typer.Option([], "--option", help="Metric option METRIC.KEY=VALUE (JSON value)."),
        scores: Optional[Path] = typer.Option(None, "--scores", help="Precomputed scores (`prefscore score -o` output): image[, prompt], one column per metric."),
        score_column: List[str] = typer.Option([], "--score-column", "-c", help="Score column(s) to use: of --scores, or inline in the judgement file (NAME_a/NAME_b for pairs, NAME for ratings)."),
        composite: List[str] = typer.Option([], "--composite", help="NAME=CALIBRATION.json: also evaluate a composite computed from the score columns."),
        lower_is_better: List[str] = typer.Option([], "--lower-is-better", help="Score column(s) where lower is better (registry metrics know their direction)."),
        group_by: List[str] = typer.Option([], "--group-by", "-g", help="Column(s) of the judgement file to break results down by (e.g. category, generator)."),
        unit: Optional[str] = typer.Option(None, "--unit", help="Column naming the bootstrap unit (default: prompt)."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap replicates (0: no intervals)."),
        level: float = typer.Option(0.95, "--level", help="Confidence level of the intervals."),
        seed: int = typer.Option(0, "--seed", help="Random seed (bootstrap, folds)."),
        tie_mode: str = typer.Option("difference", "--tie-mode", help="Tie threshold on |s_a - s_b| ('difference') or on |p_a - p_b| ('pickapic')."),
        temperature: List[str] = typer.Option([], "--temperature", help="METRIC=TAU for --tie-mode pickapic with precomputed scores."),
        logistic: str = typer.Option("4pl", "--logistic", help="Mapping before the *_mapped statistics of ratings: 4pl, 5pl or none."),
        out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="Output folder: agreement.csv/json, tests.csv, item_scores.csv, report.html."),
        report: bool = typer.Option(True, "--report/--no-report", help="Write the HTML report."),
        title: str = typer.Option("prefscore evaluation", "--title", help="Report title."),
        device: str = typer.Option("cpu", help="Torch device for on-the-fly metrics."),
        dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
        batch_size: int = typer.Option(16, help="Images per forward pass."),
    ) -> None:
        """Agreement of metrics with human judgements: accuracies (with and without ties), HPSv2 inversion,
        SRCC/KRCC/PLCC, bootstrap CIs, paired tests, breakdowns, and an HTML report."""
        from ..errors import PrefscoreError
        from .agreement import EvalConfig, evaluate
        from .report import write_report
        from .scores import ScoreLookupError

        names = split_names(metric)
        try:
            config = EvalConfig(n_boot=bootstrap, level=level, seed=seed, tie_mode=tie_mode,
                                temperatures=parse_pairs(temperature, "--temperature", float), logistic=logistic,
                                group_by=tuple(split_names(group_by)), unit=unit)
            result = evaluate(judgements, scores=scores, score_columns=split_names(score_column) or None, metrics=names,
                              models=parse_models(model, names), options=parse_options(option, names), images_root=images,
                              lower_is_better=split_names(lower_is_better), composites=parse_pairs(composite, "--composite"),
                              config=config, device=device, dtype=dtype, batch_size=batch_size, progress=bool(names))
            print_evaluation(result)
            paths = result.save(out)
            if report:
                written = write_report(out / "report.html", evaluation=result, title=title, tables_dir=out)
                paths["html"] = written["html"]
        except (PrefscoreError, ScoreLookupError, ValueError, KeyError, FileNotFoundError, TypeError) as exc:
            _fail(exc)
        err_console.print(f"wrote {escape(', '.join(str(p) for p in paths.values()))}")

    @app.command("calibrate")
    def calibrate_cmd(
        reference: Path = typer.Argument(..., help="Reference scores (`prefscore score -o` file), or a folder of reference images to score with --metric."),
        output: Path = typer.Option(..., "--output", "-o", help="Calibration file to write (JSON)."),
        column: List[str] = typer.Option([], "--column", "-c", help="Component score column(s) (default: all)."),
        metric: List[str] = typer.Option([], "--metric", "-m", help="Metric(s) to score a reference image folder with."),
        model: List[str] = typer.Option([], "--model", help="Model source METRIC=SRC, recorded in the calibration."),
        option: List[str] = typer.Option([], "--option", help="Metric option METRIC.KEY=VALUE, recorded in the calibration."),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="One prompt for every reference image (prompt-aware metrics)."),
        prompts: Optional[Path] = typer.Option(None, "--prompts", help="CSV/JSONL/Parquet with image, prompt for the reference images."),
        normaliser: str = typer.Option("zscore", "--normaliser", "-n", help="zscore, robust, percentile, minmax or none (or COLUMN=KIND, repeatable)."),
        weight: List[str] = typer.Option([], "--weight", "-w", help="COLUMN=WEIGHT (default: equal weights)."),
        fit: Optional[Path] = typer.Option(None, "--fit", help="Human judgements to learn the weights from (Bradley-Terry)."),
        pair_scores: Optional[Path] = typer.Option(None, "--pair-scores", help="Scores of the --fit images (default: the reference scores, or scored on the fly with --metric)."),
        lower_is_better: List[str] = typer.Option([], "--lower-is-better", help="Columns where lower is better."),
        l2: float = typer.Option(1e-3, "--l2", help="Ridge penalty of the weight fit."),
        nonnegative: bool = typer.Option(False, "--nonnegative", help="Constrain learned weights to be >= 0."),
        device: str = typer.Option("cpu", help="Torch device for scoring."),
        dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
        batch_size: int = typer.Option(16, help="Images per forward pass."),
    ) -> None:
        """Fit a composite's normalisers on a reference set (and weights, given or learned) and save them."""
        from ..errors import PrefscoreError
        from .composite import calibrate
        from .scores import ScoreLookupError, compute_scores

        names = split_names(metric)
        models = parse_models(model, names) if model else {}
        opts = parse_options(option, names)
        try:
            kinds = [n for n in normaliser.split(",") if n]
            norm = kinds[0] if len(kinds) == 1 and "=" not in kinds[0] else parse_pairs(kinds, "--normaliser")
            if reference.is_dir():
                from ..images import find_images
                from ..scoring import read_prompt_file

                if not names:
                    raise typer.BadParameter("a folder of reference images needs --metric")
                found, _ = find_images([reference])
                if not found:
                    raise ValueError(f"{reference}: no image files found")
                prompt_list = None
                if prompts is not None:
                    pm = read_prompt_file(prompts)
                    lacking = [str(p) for p in found if str(p.resolve()) not in pm]
                    if lacking:
                        raise ValueError(f"{prompts}: no prompt for {len(lacking)} reference image(s), e.g. {lacking[0]}")
                    prompt_list = [pm[str(p.resolve())] for p in found]
                elif prompt is not None:
                    prompt_list = [prompt] * len(found)
                table, failures = compute_scores([str(p) for p in found], prompt_list, names, models, opts, device, dtype,
                                                 batch_size, progress=True)
                for img, why in failures:
                    err_console.print(f"[yellow]could not score[/] {escape(f'{img}: {why}')}")
                ref = table
            else:
                ref = reference
            if fit is not None and pair_scores is None and names:
                from ..data import load_judgements

                ps = _score_judgement_images(load_judgements(fit), names, models, opts, device, dtype, batch_size)
            else:
                ps = pair_scores
            weights = parse_pairs(weight, "--weight", float) if weight else ("fit" if fit is not None else "equal")
            cal = calibrate(ref, columns=split_names(column) or None, normaliser=norm, weights=weights, pairs=fit,
                            pair_scores=ps, models=models, options=opts, lower_is_better=split_names(lower_is_better),
                            l2=l2, nonnegative=nonnegative)
            cal.save(output)
        except (PrefscoreError, ScoreLookupError, ValueError, KeyError, FileNotFoundError, TypeError) as exc:
            _fail(exc)
        t = Table(title=f"composite {cal.fingerprint} ({cal.weights_from} weights)")
        for c in ("component", "normaliser", "better", "weight"):
            t.add_column(c)
        for c in cal.components:
            t.add_row(c.column, c.normaliser.kind, "higher" if c.higher_is_better else "lower", f"{c.weight:.4f}")
        console.print(t)
        if cal.fit:
            err_console.print(f"fit on {cal.fit['n_pairs']} pairs: accuracy {cal.fit['accuracy']:.3f}, "
                              f"log loss {cal.fit['log_loss']:.4f}, temperature {cal.temperature:.4g}")
        err_console.print(escape(f"wrote {output}; use it with prefscore.load('composite', model='{output}') or --composite"))

    @app.command("report")
    def report_cmd(
        scores: Path = typer.Argument(..., help="Per-image scores (`prefscore score -o` output)."),
        output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write (tables beside it)."),
        column: List[str] = typer.Option([], "--column", "-c", help="Score columns to show (default: all)."),
        baseline: Optional[Path] = typer.Option(None, "--baseline", help="Scores of the 'before' images, for the reward-hacking check."),
        target: Optional[str] = typer.Option(None, "--target", help="The metric that was optimised (with --baseline)."),
        held_out: List[str] = typer.Option([], "--held-out", help="Held-out metric columns (default: all others)."),
        composite: Optional[Path] = typer.Option(None, "--composite", help="A calibration file: adds the composite as a column."),
        lower_is_better: List[str] = typer.Option([], "--lower-is-better", help="Columns where lower is better."),
        title: str = typer.Option("prefscore report", "--title", help="Report title."),
        gallery_size: int = typer.Option(12, "--gallery-size", help="Images per gallery row (best and worst)."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap replicates of the before/after changes."),
    ) -> None:
        """HTML report of a score table: distributions, correlations, disagreements, warnings, galleries."""
        from ..errors import PrefscoreError
        from .scores import ScoreTable
        from .report import write_report
        from .warnings import run_checks

        import warnings

        from .scores import ScoreColumnWarning

        try:
            cols = split_names(column) or None
            lib = split_names(lower_is_better)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ScoreColumnWarning)
                table = ScoreTable.read(scores, cols, lib)
            for w in caught:
                err_console.print(f"[yellow]warning[/] {escape(str(w.message))}")
            cal = None
            if composite is not None:
                from .composite import Calibration

                cal = Calibration.load(composite)
                table.values["composite"] = cal.apply(table.values)
                table = ScoreTable(table.images, table.prompts, table.values,
                                   {**table.higher_is_better, "composite": True}, table.source, table.bases)
            before = ScoreTable.read(baseline, cols, lib) if baseline is not None else None
            if before is not None and cal is not None:
                before.values["composite"] = cal.apply(before.values)
                before = ScoreTable(before.images, before.prompts, before.values,
                                    {**before.higher_is_better, "composite": True}, before.source, before.bases)
            checks = run_checks(table, before, target, split_names(held_out) or None, n_boot=bootstrap)
            print_findings(checks.findings)
            written = write_report(output, scores=table, checks=checks, calibration=cal, title=title,
                                   gallery_size=gallery_size)
        except (PrefscoreError, ValueError, KeyError, FileNotFoundError) as exc:
            _fail(exc)
        err_console.print(f"wrote {escape(', '.join(str(p) for p in written.values()))}")


def _score_judgement_images(judgements, names, models, opts, device, dtype, batch_size):
    """Score every (image, prompt) of a judgement set (pairs, rankings or ratings) with ``names``."""
    from ..data import Pair, Ranking
    from .scores import compute_scores

    items: dict[tuple[str, str], None] = {}
    for r in judgements.records:
        imgs = (r.image_a, r.image_b) if isinstance(r, Pair) else (r.images if isinstance(r, Ranking) else (r.image,))
        for i in imgs:
            items.setdefault((i, r.prompt))
    keys = list(items)
    prompts = [k[1] for k in keys] if judgements.has_prompts else None
    table, failures = compute_scores([k[0] for k in keys], prompts, names, models, opts, device, dtype,
                                     batch_size, progress=True)
    for img, why in failures:
        err_console.print(f"[yellow]could not score[/] {escape(f'{img}: {why}')}")
    return table
