"""Scoring many files with one or several metrics: decode once, encode once, stream rows, resume.

:class:`ScoreJob` runs the local engine (:mod:`prefscore.engine.local`) and writes each finished
batch to the output at once (JSONL/CSV flushed per batch, Parquet in row groups of ``chunk_size``
rows, with whatever is buffered written out on exit), so Ctrl-C or a crash loses at most the batch
in flight; a rerun with ``resume=True`` skips every image already in the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .base import Metric
from .engine.local import Engine, EngineOptions
from .errors import PromptError
from .output import ResultWriter, read_done


def metric_columns(name: str, metric: Metric) -> list[str]:
    """Output columns of a metric: its name, or ``name.output`` for each of several outputs."""
    if len(metric.output_names) == 1:
        return [name]
    return [f"{name}.{o}" for o in metric.output_names]


@dataclass
class ScoreJob:
    """Score ``images`` with every metric in ``metrics`` (name -> loaded metric).

    ``prompts``: None, one string for all, or a mapping image path -> prompt. Each image is decoded
    once for all metrics, preprocessed once per distinct preprocessing, and encoded once per
    distinct image tower (see ``options``). Rows are ``{"image", "prompt", <columns>, "error"}``.
    ``chunk_size``: rows per Parquet row group. ``options``: engine settings (workers, autocast,
    compile, feature cache, ...); ``batch_size`` overrides ``options.batch_size``.
    """

    metrics: Mapping[str, Metric]
    batch_size: int = 16
    chunk_size: int = 1024
    options: EngineOptions = field(default_factory=EngineOptions)
    scored: int = 0  #: rows of the last run without an error
    failed: int = 0  #: rows of the last run with an error

    def columns(self, with_prompt: bool) -> list[str]:
        cols = ["image"] + (["prompt"] if with_prompt else [])
        for name, metric in self.metrics.items():
            cols += metric_columns(name, metric)
        return cols + ["error"]

    def run(self, images: Sequence[Path], prompts: str | Mapping[str, str] | None = None, output: Path | None = None,
            resume: bool = False, progress: Callable[[int], None] | None = None, keep_rows: bool = True) -> list[dict]:
        """Score and return the rows (earlier rows first when resuming). With ``keep_rows=False``
        rows only go to ``output`` (constant memory for any N) and the list is empty; ``scored`` and
        ``failed`` count them either way."""
        needs_prompt = any(m.needs_prompt for m in self.metrics.values())
        if needs_prompt and prompts is None:
            names = ", ".join(n for n, m in self.metrics.items() if m.needs_prompt)
            raise PromptError(f"metric(s) {names} score an image against a prompt: give --prompt TEXT or --prompts FILE")
        with_prompt = prompts is not None
        columns = self.columns(with_prompt)
        done = read_done(output) if (output is not None and resume) else []
        done_keys = {r.get("image") for r in done}
        todo = [p for p in images if str(p) not in done_keys]
        writer = ResultWriter(output, columns, done) if output is not None else None
        rows: list[dict] = []
        buffer: list[dict] = []
        self.scored = self.failed = 0
        if progress is not None and done:
            progress(len(images) - len(todo))

        def emit(batch_rows: list[dict]) -> None:
            for r in batch_rows:
                if r.get("error"):
                    self.failed += 1
                else:
                    self.scored += 1
            if keep_rows:
                rows.extend(batch_rows)
            if writer is None:
                return
            if writer.format != "parquet":
                writer.write(batch_rows)
                return
            buffer.extend(batch_rows)
            if len(buffer) >= self.chunk_size:
                writer.write(buffer)
                buffer.clear()

        try:
            items, item_prompts, missing = [], [], []
            for p in todo:
                row_prompt = prompts if (prompts is None or isinstance(prompts, str)) else prompts.get(str(Path(p).resolve()))
                if prompts is not None and row_prompt is None:
                    missing.append({"image": str(p), "error": "no prompt for this image in the prompts file"})
                    continue
                items.append(p)
                item_prompts.append(row_prompt)
            if missing:
                emit(missing)
                if progress is not None:
                    progress(len(missing))
            opts = EngineOptions(**{**self.options.__dict__, "batch_size": self.batch_size})
            engine = Engine(self.metrics, opts)
            cols = {name: metric_columns(name, m) for name, m in self.metrics.items()}
            for batch in engine.run(items, item_prompts if with_prompt else None):
                batch_rows = []
                for j, i in enumerate(batch.indices):
                    row = {"image": str(items[i])}
                    if with_prompt:
                        row["prompt"] = item_prompts[i]
                    for name in batch.names:
                        for c, value in zip(cols[name], batch.scores[name][j]):
                            row[c] = float(value)
                    errs = batch.errors.get(j)
                    if errs:
                        row["error"] = "; ".join(why if m is None else f"{m}: {why}" for m, why in errs)
                    batch_rows.append(row)
                emit(batch_rows)
                if progress is not None:
                    progress(len(batch_rows))
        finally:
            if writer is not None:
                if buffer:
                    writer.write(buffer)
                writer.close()
        return done + rows if resume else rows


def read_prompt_file(path: Path) -> dict[str, str]:
    """Image -> prompt from a CSV / JSONL / Parquet with ``image`` and ``prompt`` columns
    (relative image paths are resolved against the file's folder)."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    elif suffix in (".jsonl", ".json"):
        table = pd.read_json(path, lines=True, dtype=False)
    elif suffix in (".parquet", ".pq"):
        table = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: prompts file must be .csv, .jsonl or .parquet with columns image, prompt")
    missing = {"image", "prompt"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need image, prompt)")
    out: dict[str, str] = {}
    for row_number, (image, prompt) in enumerate(zip(table["image"], table["prompt"]), start=2 if suffix == ".csv" else 1):
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError(f"{path}: row {row_number} ({image}): missing prompt")
        if "://" in str(image):  # a URL (Ray engine sources): matched as written
            out[str(image)] = prompt
            continue
        image_path = Path(str(image))
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        out[str(image_path.resolve())] = prompt
    return out

