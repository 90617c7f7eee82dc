"""Scoring many files with one or several metrics: decode once, encode once, stream rows, resume.

:class:`ScoreJob` runs the local engine (:mod:`prefscore.engine.local`) and writes each finished
batch to the output at once (JSONL/CSV appended and flushed per batch, Parquet as a committed part
file per ``chunk_size`` rows, merged at the end; see :mod:`prefscore.output`), so Ctrl-C, a crash
or ``kill -9`` loses at most the rows in flight; a rerun with ``resume=True`` skips every (image,
prompt) already in the output, scores only the metrics an earlier row lacks, and keeps the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .base import Metric
from .engine.local import Engine, EngineOptions
from .errors import PromptError
from .output import ResultWriter, image_key, merge_columns, read_existing, row_key


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
    notes: list[str] = field(default_factory=list)  #: what the last run skipped or repaired, and why

    def columns(self, with_prompt: bool) -> list[str]:
        cols = ["image"] + (["prompt"] if with_prompt else [])
        for name, metric in self.metrics.items():
            cols += metric_columns(name, metric)
        return cols + ["error"]

    def run(self, images: Sequence[Path], prompts: str | Mapping[str, str] | Sequence[str | None] | None = None,
            output: Path | None = None, resume: bool = False, progress: Callable[[int], None] | None = None,
            keep_rows: bool = True) -> list[dict]:
        """Score and return the rows (earlier rows first when resuming). With ``keep_rows=False``
        rows only go to ``output`` (constant memory for any N) and the list is empty; ``scored`` and
        ``failed`` count the rows of this run either way, ``notes`` says what a resume skipped and why.

        ``prompts``: None, one string for all images, a mapping resolved image path -> prompt, or a
        list aligned with ``images`` (the same image may appear once per prompt); an image without a
        prompt gets an error row. Rows are keyed by (resolved image path, prompt): with ``resume``,
        a key already in ``output`` is skipped when it has a value (or a reason) for every metric, a
        key lacking some metrics (an earlier run with another metric set) is scored with those
        only and completed, new metric columns are added, and rows for other keys are kept as they are.
        """
        needs_prompt = any(m.needs_prompt for m in self.metrics.values())
        if needs_prompt and prompts is None:
            names = ", ".join(n for n, m in self.metrics.items() if m.needs_prompt)
            raise PromptError(f"metric(s) {names} score an image against a prompt: give --prompt TEXT or --prompts FILE")
        images = [str(p) for p in images]
        with_prompt = prompts is not None
        item_prompts = _align_prompts(images, prompts)
        columns = self.columns(with_prompt)
        existing = read_existing(output) if (output is not None and resume) else None
        self.notes = list(existing.notes) if existing is not None else []
        index: dict[tuple, dict] = {}
        if existing is not None:
            columns = merge_columns(existing.columns, columns)
            index = {row_key(r): r for r in existing.rows}
            added = [c for c in columns if c not in existing.columns]
            if existing.rows and added:
                self.notes.append(f"resume: added column(s) {', '.join(added)} to {output}")

        # the plan: which (image, prompt) keys to score, with which metrics
        seen: set[tuple] = set()
        groups: dict[tuple[str, ...], list[int]] = {}
        merge_from: dict[int, dict] = {}
        no_prompt: list[int] = []
        already = twice = 0
        for i, image in enumerate(images):
            key = (image_key(image), (item_prompts[i] or None) if with_prompt else None)
            if key in seen:
                twice += 1
                continue
            seen.add(key)
            old = index.get(key)
            pending = tuple(self.metrics) if old is None else self._pending(old, columns)
            if not pending:
                already += 1
            elif with_prompt and item_prompts[i] is None:
                no_prompt.append(i)
            else:
                if old is not None:
                    merge_from[i] = old
                groups.setdefault(pending, []).append(i)
        if already:
            self.notes.append(f"resume: {already} image(s) already scored in {output}: skipped")
        if merge_from:
            lacking = sorted({n for pending, idx in groups.items() for i in idx if i in merge_from for n in pending})
            self.notes.append(f"resume: {len(merge_from)} row(s) of {output} lack metric(s) {', '.join(lacking)}: "
                              f"scoring only those and completing the rows")
        others = [k for k in index if k not in seen]
        if others:
            targets = {k[0] for k in seen}
            reprompted = [k for k in others if k[0] in targets]
            detail = (f"; {len(reprompted)} of them are these images under another prompt (e.g. {reprompted[0][1]!r})"
                      if reprompted else "")
            self.notes.append(f"resume: {len(others)} row(s) of {output} are for other images or prompts: kept, not rescored{detail}")
        if twice:
            self.notes.append(f"{twice} input(s) named more than once (same file and prompt): scored once")

        writer = ResultWriter(output, columns, existing) if output is not None else None
        rows: list[dict] = []
        buffer: list[dict] = []
        superseded: set[tuple] = set()
        self.scored = self.failed = 0
        if progress is not None and (already or twice):
            progress(already + twice)

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
            if no_prompt:
                emit([{"image": images[i], "prompt": None, "error": "no prompt for this image in the prompts file"} for i in no_prompt])
                if progress is not None:
                    progress(len(no_prompt))
            opts = EngineOptions(**{**self.options.__dict__, "batch_size": self.batch_size})
            cols = {name: metric_columns(name, m) for name, m in self.metrics.items()}
            for pending, idx in groups.items():
                engine = Engine({n: self.metrics[n] for n in pending}, opts)
                for batch in engine.run([images[i] for i in idx], [item_prompts[i] for i in idx] if with_prompt else None):
                    batch_rows = []
                    for j, b in enumerate(batch.indices):
                        i = idx[b]
                        row = {"image": images[i]}
                        if with_prompt:
                            row["prompt"] = item_prompts[i]
                        for name in batch.names:
                            for c, value in zip(cols[name], batch.scores[name][j]):
                                row[c] = float(value)
                        errs = batch.errors.get(j)
                        if errs:
                            row["error"] = "; ".join(why if m is None else f"{m}: {why}" for m, why in errs)
                        if i in merge_from:
                            row = _complete(merge_from[i], row)
                            superseded.add(row_key(merge_from[i]))
                            if writer is not None:
                                writer.supersede([row_key(merge_from[i])])
                        batch_rows.append(row)
                    emit(batch_rows)
                    if progress is not None:
                        progress(len(batch_rows))
        finally:
            if writer is not None:
                if buffer:
                    writer.write(buffer)
                writer.close()
        if with_prompt:  # one warning per metric and run: how many of the prompts scored were cut
            scored_prompts = [item_prompts[i] for idx in groups.values() for i in idx]
            for metric in self.metrics.values():
                metric.warn_truncated(scored_prompts, stacklevel=3)
        if existing is None:
            return rows
        return [r for r in existing.rows if row_key(r) not in superseded] + rows

    def _pending(self, old: dict, columns: list[str]) -> tuple[str, ...]:
        """Metrics an earlier row lacks: no value and no reason for them (an image-level error, one
        the row's image could not be read for, covers every metric)."""
        parts = [p for p in (old.get("error") or "").split("; ") if p]
        names = set(self.metrics) | {c for c in columns if c not in ("image", "prompt", "error")}
        names |= {c.rsplit(".", 1)[0] for c in names}
        if any(not any(p.startswith(f"{n}: ") for n in names) for p in parts):
            return ()
        pending = []
        for name, metric in self.metrics.items():
            if any(old.get(c) is not None for c in metric_columns(name, metric)):
                continue
            if any(p.startswith(f"{name}: ") for p in parts):
                continue
            pending.append(name)
        return tuple(pending)


def _align_prompts(images: list[str], prompts) -> list[str | None]:
    if prompts is None:
        return [None] * len(images)
    if isinstance(prompts, str):
        return [prompts] * len(images)
    if isinstance(prompts, Mapping):
        return [prompts.get(image_key(p)) for p in images]
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise PromptError(f"got {len(prompts)} prompts for {len(images)} images: pass one string, a mapping, or one per image")
    return prompts


def _complete(old: dict, new: dict) -> dict:
    """An earlier row completed with the values (and errors) of the metrics scored now."""
    row = dict(old)
    row.update({c: v for c, v in new.items() if c != "error"})
    errors = [e for e in (old.get("error"), new.get("error")) if e]
    row["error"] = "; ".join(errors) if errors else None
    return row


def read_prompt_pairs(path: Path) -> list[tuple[str, str]]:
    """``(image, prompt)`` pairs, in file order, from a CSV / JSONL / Parquet with ``image`` and
    ``prompt`` columns. Relative image paths are resolved against the file's folder (URLs kept as
    written); an image may appear under several prompts."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        elif suffix in (".jsonl", ".json"):
            table = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        elif suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            raise ValueError(f"{path}: prompts file must be .csv, .jsonl or .parquet with columns image, prompt")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the prompts file as UTF-8") from None
    except FileNotFoundError:
        raise ValueError(f"{path}: prompts file not found") from None
    missing = {"image", "prompt"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need image, prompt)")
    out: list[tuple[str, str]] = []
    for row_number, (image, prompt) in enumerate(zip(table["image"], table["prompt"]), start=2 if suffix == ".csv" else 1):
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError(f"{path}: row {row_number} ({image}): missing prompt")
        if "://" in str(image):  # a URL (Ray engine sources): matched as written
            out.append((str(image), prompt))
            continue
        image_path = Path(str(image))
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        out.append((str(image_path.resolve()), prompt))
    return out


def read_prompt_file(path: Path) -> dict[str, str]:
    """Image -> prompt (see :func:`read_prompt_pairs`) for callers that score one prompt per image;
    an image listed under two different prompts is an error naming both."""
    out: dict[str, str] = {}
    for image, prompt in read_prompt_pairs(path):
        if out.get(image, prompt) != prompt:
            raise PromptError(f"{path}: {image} is listed under two prompts ({out[image]!r} and {prompt!r}); "
                              f"this command scores one prompt per image (prefscore score with the local engine scores each pair)")
        out[image] = prompt
    return out
