"""Scoring on Ray Data: read folders, Parquet or WebDataset shards, score on an actor pool, write Parquet.

Needs ``pip install "ray[data]"``. One model set per actor (loaded once in the actor's constructor),
``map_batches`` feeds it batches of encoded images, and each actor runs the local engine
(:class:`~prefscore.engine.local.Engine`: parallel decode, shared encoding) on them. On a cluster,
start Ray there (``ray start --head`` / ``ray start --address=...``) and set ``RAY_ADDRESS`` or pass
``address=``; sources may then be any fsspec / pyarrow URL (``s3://``, ``gs://``, ``hf://`` ...).

>>> from prefscore.engine.ray import RayScoreConfig, score_with_ray
>>> score_with_ray(["s3://bucket/shards/"], "out/", RayScoreConfig(metrics=["laion-aesthetic"],
...                kind="webdataset", concurrency=8, num_gpus=1))
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import PrefscoreError
from ..images import IMAGE_SUFFIXES
from .local import EngineOptions

KINDS = ("auto", "folder", "parquet", "webdataset")
WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
NAME_COLUMNS = ("path", "key", "__key__", "id", "name", "url")


class OutputExistsError(PrefscoreError, FileExistsError):
    """The output folder already holds results and ``resume`` was not asked for."""


@dataclass
class RayScoreConfig:
    """What to score and how the actor pool runs.

    ``metrics``: registry names; ``models``: name -> model source (hub id or a directory every
    node can read); ``options``: name -> metric options. ``prompt``: one prompt for every image;
    ``prompts``: image name -> prompt (what ``--prompts FILE`` gives: local paths are matched after
    resolving them, URLs as written; a Parquet source's name is its path column or name column);
    else prompts come from ``prompt_column`` (Parquet; WebDataset default ``txt``).
    ``image_column``: Parquet column holding image bytes or paths. ``kind``: ``auto`` (by suffix:
    ``.parquet`` -> parquet, ``.tar`` -> webdataset, else a folder of images), ``folder``,
    ``parquet`` or ``webdataset``. ``concurrency``: number of actors (one model set each);
    ``num_gpus``/``num_cpus``: per actor (a GPU actor scores on ``cuda``). ``batch_size``: images
    per ``map_batches`` call and per forward. ``engine``: the actors' local engine settings.
    """

    metrics: Sequence[str]
    models: dict[str, str | None] = field(default_factory=dict)
    options: dict[str, dict] = field(default_factory=dict)
    prompt: str | None = None
    prompts: dict[str, str] | None = None
    prompt_column: str | None = None
    image_column: str = "image"
    kind: str = "auto"
    concurrency: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    batch_size: int = 16
    dtype: str = "float32"
    engine: EngineOptions = field(default_factory=EngineOptions)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not self.metrics:
            raise ValueError("give at least one metric")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.prompt is not None and self.prompts is not None:
            raise ValueError("give prompt (one for all images) or prompts (per image), not both")
        if self.prompts is not None:
            self.prompts = {image_key(k): v for k, v in self.prompts.items()}


def image_key(name: str) -> str:
    """How image names are matched against a prompts mapping: URLs as written, local paths resolved."""
    name = str(name)
    return name if "://" in name else str(Path(name).resolve())


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError('the Ray engine needs Ray Data: pip install "ray[data]"') from None
    return ray


def detect_kind(sources: Sequence[str]) -> str:
    first = str(sources[0]).rstrip("/")
    if first.endswith((".parquet", ".pq")):
        return "parquet"
    if first.endswith(".tar") or first.endswith(".tar.gz"):
        return "webdataset"
    return "folder"


def read_source(sources: Sequence[str | os.PathLike], config: RayScoreConfig, filesystem=None):
    """A Ray dataset with columns ``image`` (a name: path, key or content hash), ``data`` (encoded
    bytes; empty when ``image`` is a path the actor opens itself) and ``prompt`` (when prompts
    come from the data)."""
    ray = _require_ray()
    paths = [os.fspath(s) for s in sources]
    kind = detect_kind(paths) if config.kind == "auto" else config.kind
    if kind == "folder":
        exts = sorted(s.lstrip(".") for s in IMAGE_SUFFIXES)
        ds = ray.data.read_binary_files(paths, include_paths=True, filesystem=filesystem,
                                        file_extensions=exts + [e.upper() for e in exts])
        return ds.map_batches(_from_files, batch_format="numpy")
    if kind == "parquet":
        ds = ray.data.read_parquet(paths, filesystem=filesystem)
        return ds.map_batches(_from_parquet, fn_kwargs={"image_column": config.image_column,
                                                        "prompt_column": config.prompt_column or "prompt"},
                              batch_format="pyarrow")
    ds = ray.data.read_webdataset(paths, filesystem=filesystem, decoder=None)
    return ds.map_batches(_from_webdataset, fn_kwargs={"prompt_column": config.prompt_column or "txt"}, batch_format="pyarrow")


def _from_files(batch: dict) -> dict:
    return {"image": np.asarray([str(p) for p in batch["path"]], dtype=object),
            "data": np.asarray([bytes(b) for b in batch["bytes"]], dtype=object)}


def _name_for(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def _from_parquet(table, image_column: str, prompt_column: str) -> dict:
    import pyarrow as pa

    if image_column not in table.column_names:
        raise ValueError(f"Parquet source has no column {image_column!r} (columns: {', '.join(table.column_names)}); "
                         f"set image_column")
    col = table.column(image_column)
    values = col.to_pylist()
    names_col = next((c for c in NAME_COLUMNS if c in table.column_names and c != image_column), None)
    names = table.column(names_col).to_pylist() if names_col else None
    images, data = [], []
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        for k, v in enumerate(values):
            v = v or b""
            data.append(v)
            images.append(str(names[k]) if names and names[k] is not None else _name_for(v))
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        for v in values:
            images.append(v or "")
            data.append(_read_url(v) if v and "://" in v else b"")
    elif pa.types.is_struct(col.type):  # Hugging Face datasets' Image feature: {"bytes", "path"}
        for v in values:
            v = v or {}
            blob = v.get("bytes") or b""
            data.append(blob)
            images.append(v.get("path") or _name_for(blob))
    else:
        raise ValueError(f"column {image_column!r} has type {col.type}; expected bytes, paths/URLs or {{bytes, path}} structs")
    out = {"image": np.asarray(images, dtype=object), "data": np.asarray(data, dtype=object)}
    if prompt_column in table.column_names:
        out["prompt"] = np.asarray(table.column(prompt_column).to_pylist(), dtype=object)
    return out


def _read_url(url: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(url, "rb") as fh:
            return fh.read()
    except (OSError, ValueError):
        return b""  # the actor reports an empty image for this row


def _from_webdataset(table, prompt_column: str) -> dict:
    cols = table.column_names
    image_keys = [k for k in WDS_IMAGE_KEYS if k in cols]
    keys = table.column("__key__").to_pylist() if "__key__" in cols else [None] * table.num_rows
    urls = table.column("__url__").to_pylist() if "__url__" in cols else [None] * table.num_rows
    columns = {k: table.column(k).to_pylist() for k in image_keys}
    images, data = [], []
    for r in range(table.num_rows):
        blob = next((columns[k][r] for k in image_keys if columns[k][r]), None) or b""
        data.append(blob)
        images.append(f"{urls[r]}#{keys[r]}" if urls[r] else str(keys[r]))
    out = {"image": np.asarray(images, dtype=object), "data": np.asarray(data, dtype=object)}
    if prompt_column in cols:
        out["prompt"] = np.asarray([v.decode("utf-8") if isinstance(v, bytes) else v for v in table.column(prompt_column).to_pylist()],
                                   dtype=object)
    return out


class ScoreActor:
    """One model set per actor; scores batches of ``{image, data[, prompt]}`` with the local engine."""

    def __init__(self, config: dict):
        import torch

        from ..registry import load
        from ..scoring import metric_columns
        from .local import Engine

        self.prompt = config["prompt"]
        self.prompt_map = config.get("prompts")
        device = "cuda" if config["num_gpus"] > 0 and torch.cuda.is_available() else "cpu"
        self.metrics = {n: load(n, model=config["models"].get(n), device=device, dtype=config["dtype"],
                                **config["options"].get(n, {})) for n in config["metrics"]}
        self.engine = Engine(self.metrics, EngineOptions(**config["engine"]))
        self.columns = {n: metric_columns(n, m) for n, m in self.metrics.items()}
        self.needs_prompt = any(m.needs_prompt for m in self.metrics.values())

    def __call__(self, batch: dict) -> dict:
        names = [str(x) for x in batch["image"]]
        n = len(names)
        items = [bytes(d) if d is not None and len(d) else names[i] for i, d in enumerate(batch["data"])]
        if self.prompt is not None:
            prompts = [self.prompt] * n
        elif self.prompt_map is not None:
            prompts = [self.prompt_map.get(image_key(name)) for name in names]
        elif "prompt" in batch:
            prompts = [p if isinstance(p, str) else None for p in batch["prompt"]]
        else:
            prompts = [None] * n
        errors: list[str | None] = [None] * n
        ok = list(range(n))
        if self.needs_prompt:
            ok = [i for i in range(n) if prompts[i]]
            for i in set(range(n)) - set(ok):
                errors[i] = "no prompt for this image"
        scores, errs = self.engine.score([items[i] for i in ok], [prompts[i] for i in ok] if self.needs_prompt else None)
        out: dict[str, np.ndarray] = {"image": np.asarray(names, dtype=object)}
        if self.needs_prompt or self.prompt is not None or self.prompt_map is not None or "prompt" in batch:
            out["prompt"] = np.asarray(prompts, dtype=object)
        for name, cols in self.columns.items():
            full = np.full((n, len(cols)), np.nan)
            full[ok] = scores[name]
            for k, c in enumerate(cols):
                out[c] = full[:, k]
        for j, metric, why in errs:
            i = ok[j]
            msg = why if metric is None else f"{metric}: {why}"
            errors[i] = msg if errors[i] is None else f"{errors[i]}; {msg}"
        out["error"] = np.asarray(errors, dtype=object)
        return out


def scored_dataset(sources: Sequence[str | os.PathLike], config: RayScoreConfig, filesystem=None):
    """The lazy Ray dataset of result rows (``image``, ``prompt``?, metric columns, ``error``)."""
    return _score(read_source(sources, config, filesystem), config)


def _score(ds, config: RayScoreConfig):
    actor_config = {"metrics": list(config.metrics), "models": dict(config.models), "options": dict(config.options),
                    "prompt": config.prompt, "prompts": config.prompts, "dtype": config.dtype, "num_gpus": config.num_gpus,
                    "engine": {**asdict(config.engine), "batch_size": config.batch_size}}
    import ray.data

    return ds.map_batches(ScoreActor, fn_constructor_kwargs={"config": actor_config}, batch_size=config.batch_size,
                          compute=ray.data.ActorPoolStrategy(size=config.concurrency), num_gpus=config.num_gpus,
                          num_cpus=config.num_cpus, batch_format="numpy")


def _done_images(output: str, filesystem) -> set[str] | None:
    """Image names already in the output folder (None when there is no output yet)."""
    import pyarrow.dataset as pads

    try:
        dataset = pads.dataset(output, format="parquet", filesystem=filesystem)
        return set(dataset.to_table(columns=["image"]).column("image").to_pylist()) if dataset.files else None
    except (FileNotFoundError, OSError):
        return None


def score_with_ray(sources: Sequence[str | os.PathLike], output: str | os.PathLike, config: RayScoreConfig,
                   filesystem=None, address: str | None = None, resume: bool = False) -> dict:
    """Score ``sources`` and write Parquet files under the folder ``output``; returns
    ``{"rows", "failed", "output"}`` (counting every row in the folder). Starts a local Ray (or
    joins ``address`` / ``RAY_ADDRESS``) unless one is running already. ``resume``: skip images
    already in ``output`` (a folder that already holds results is refused without it)."""
    ray = _require_ray()
    output = os.fspath(output)
    done = _done_images(output, filesystem)
    if done is not None and not resume:
        raise OutputExistsError(f"{output} already holds results: pass resume=True (--resume) to add the missing images, "
                              f"or choose another folder")
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    ds = read_source(sources, config, filesystem)
    if done:
        ds = ds.filter(lambda row: row["image"] not in done)
    _score(ds, config).write_parquet(output, filesystem=filesystem)
    import pyarrow.dataset as pads

    table = pads.dataset(output, format="parquet", filesystem=filesystem).to_table(columns=["error"])
    failed = table.num_rows - table.column("error").null_count
    return {"rows": table.num_rows, "failed": int(failed), "output": output if "://" in output else str(Path(output))}


def run_from_cli(sources: list[str], output, metrics: list[str], models: dict, options: dict, prompt: str | None,
                 prompts_file, prompt_column: str | None, image_column: str, concurrency: int, gpus_per_actor: float,
                 dtype: str, engine_options: EngineOptions, resume: bool) -> dict:
    """``prefscore score --engine ray``: check the arguments, then :func:`score_with_ray`."""
    if output is None:
        raise ValueError("--engine ray writes a folder of Parquet files: give --output DIR")
    if str(output).endswith((".jsonl", ".json", ".csv")):
        raise ValueError(f"--engine ray writes Parquet files into a folder, not {output}")
    prompt_map = None
    if prompts_file is not None:
        from ..scoring import read_prompt_file

        prompt_map = read_prompt_file(Path(prompts_file))
        if not sources:  # score the images the file lists
            sources = sorted(prompt_map)
    if not sources:
        raise ValueError("no sources: give folders, Parquet files or WebDataset shards (PATHS or --source URL), "
                         "or a --prompts file listing the images")
    config = RayScoreConfig(metrics=metrics, models={m: models.get(m) for m in metrics}, options=options, prompt=prompt,
                            prompts=prompt_map,
                            prompt_column=prompt_column, image_column=image_column, concurrency=concurrency,
                            num_gpus=gpus_per_actor, batch_size=engine_options.batch_size or 16, dtype=dtype,
                            engine=engine_options)
    return score_with_ray(sources, output, config, resume=resume)
