"""Scoring many files with one or several metrics: decode once, stream results, resume, keep errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .base import Metric
from .errors import ImageError, PromptError
from .images import load_image
from .output import ResultWriter, read_done


def metric_columns(name: str, metric: Metric) -> list[str]:
    """Output columns of a metric: its name, or ``name.output`` for each of several outputs."""
    if len(metric.output_names) == 1:
        return [name]
    return [f"{name}.{o}" for o in metric.output_names]


@dataclass
class ScoreJob:
    """Score ``images`` with every metric in ``metrics`` (name -> loaded metric).

    ``prompts``: None, one string for all, or a mapping image path -> prompt. Images are decoded
    once per chunk and shared by all metrics. Rows are ``{"image", "prompt", <columns>, "error"}``.
    """

    metrics: Mapping[str, Metric]
    batch_size: int = 16
    chunk_size: int = 256
    rows: list[dict] = field(default_factory=list)

    def columns(self, with_prompt: bool) -> list[str]:
        cols = ["image"] + (["prompt"] if with_prompt else [])
        for name, metric in self.metrics.items():
            cols += metric_columns(name, metric)
        return cols + ["error"]

    def run(self, images: Sequence[Path], prompts: str | Mapping[str, str] | None = None, output: Path | None = None,
            resume: bool = False, progress: Callable[[int], None] | None = None) -> list[dict]:
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
        if progress is not None and done:
            progress(len(images) - len(todo))
        try:
            for start in range(0, len(todo), self.chunk_size):
                chunk = todo[start : start + self.chunk_size]
                chunk_rows = self._score_chunk(chunk, prompts)
                rows.extend(chunk_rows)
                if writer is not None:
                    writer.write(chunk_rows)
                if progress is not None:
                    progress(len(chunk))
        finally:
            if writer is not None:
                writer.close()
        return done + rows if resume else rows

    def _score_chunk(self, paths: Sequence[Path], prompts) -> list[dict]:
        rows = [{"image": str(p)} for p in paths]
        decoded, ok, raw_ok = [], [], []
        decode = any(not m.decodes_inputs for m in self.metrics.values())
        for i, p in enumerate(paths):
            if prompts is not None:
                prompt = prompts if isinstance(prompts, str) else prompts.get(str(Path(p).resolve()))
                if prompt is None:
                    rows[i]["error"] = "no prompt for this image in the prompts file"
                    continue
                rows[i]["prompt"] = prompt
            raw_ok.append(i)
            if not decode:
                continue
            try:
                decoded.append(load_image(p, str(p)))
                ok.append(i)
            except ImageError as exc:
                rows[i]["error"] = exc.reason
        for name, metric in self.metrics.items():
            # metrics that read their own inputs (videos) get the paths, the others the decoded images
            items, rows_in = ([str(paths[i]) for i in raw_ok], raw_ok) if metric.decodes_inputs else (decoded, ok)
            if not rows_in:
                continue
            batch_prompts = [rows[i]["prompt"] for i in rows_in] if metric.needs_prompt else None
            scores, errors = metric.score_records(items, batch_prompts, batch_size=self.batch_size)
            cols = metric_columns(name, metric)
            for j, i in enumerate(rows_in):
                for c, value in zip(cols, scores[j]):
                    rows[i][c] = float(value)
            for j, _, reason in errors:
                row = rows[rows_in[j]]
                row["error"] = f"{row['error']}; {name}: {reason}" if row.get("error") else f"{name}: {reason}"
        return rows


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
        image_path = Path(str(image))
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        out[str(image_path.resolve())] = prompt
    return out

