"""Readers for the published benchmark sets, each in the layout its authors distribute.

Every adapter turns a data set into a :class:`BenchSet`: the human judgements as
:class:`prefscore.data.Judgements` records whose image fields are *item ids*, plus a streaming
iterator over the images (:meth:`BenchSet.chunks`), so that a 100k-image set is read one chunk at a
time and never held in memory. Item ids are:

* for sets of image files: the path relative to the set's image folder, with ``/`` separators
  (``part-005658/images/0040/45b0....webp``, ``10004473.jpg``);
* for Pick-a-Pic (images stored as bytes in parquet): the image uid (``image_0_uid``/``image_1_uid``).

A score file for ``prefscore bench --scores`` uses the same ids in its ``image`` column (absolute paths
under the image folder are accepted too).

The layouts (sources in docs/bench.md):

========================  =============================================================================
``hpdv2``                 ``test.json``: list of ``{"prompt", "image_path": [k paths], "rank": [k]}``
                          (lower rank = preferred; equal = tie), images in ``test/`` (or beside it)
``imagereward``           ImageReward's ``data/test.json``: ``{"id", "prompt", "generations": [k],
                          "ranking": [k]}`` (1 = best, equal = tie), images in ``test_images/``
``pickapic-v1[-unique]``  parquet shards ``<split>-*.parquet`` (hub: ``data/``) with ``caption``,
``pickapic-v2[-unique]``  ``jpg_0``/``jpg_1`` (bytes), ``label_0`` (1, 0 or 0.5 = tie), ``image_0_uid``,
                          ``image_1_uid``; tie threshold from ``validation[_unique]``, scored on
                          ``test[_unique]``
``ava``                   ``AVA.txt``: ``index image_id c1..c10 tag1 tag2 challenge`` (whitespace),
                          MOS = sum(i c_i) / sum(c_i) on 1-10; images ``<image_id>.jpg`` in ``images/``
``koniq10k``              ``koniq10k_scores_and_distributions.csv`` (``image_name``, ``MOS`` on 1-5, ...)
                          or ``koniq10k_distributions_sets.csv`` (+ ``set``); images in ``1024x768/``
``spaq``                  ``Annotations/MOS and Image attribute scores.xlsx`` (``Image name``, ``MOS``
                          0-100); images in ``TestImage/``
``agiqa-3k[-align]``      ``data.csv`` (``name``, ``prompt``, ``mos_quality``, ``mos_align``, 1-5)
========================  =============================================================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from ..data import DataError, Judgements, Pair, Ranking, Rating


@dataclass(frozen=True)
class Item:
    """One image to score: its id, its prompt (``""`` when the set has none) and where to read it
    (a file path, or the encoded bytes)."""

    key: str
    prompt: str
    source: object


ChunkReader = Callable[[int, "set[str] | None"], Iterator[list[Item]]]


@dataclass
class BenchSet:
    """A benchmark set ready for scoring and evaluation.

    ``judgements``: records whose image fields are item ids. ``columns``: per-record extra columns
    for :func:`prefscore.evaluation.evaluate` (``split`` = ``validation``/``test`` for Pick-a-Pic).
    ``statistics``: the statistics its papers report, first = the headline one. ``tie_mode`` and
    ``logistic``: the protocol settings passed to :class:`prefscore.evaluation.EvalConfig`.
    ``image_root``: the folder item ids are relative to (None for bytes-only sets).
    """

    dataset: str
    judgements: Judgements
    statistics: tuple[str, ...]
    reader: ChunkReader
    image_root: Path | None
    columns: dict[str, list] = field(default_factory=dict)
    tie_mode: str = "difference"
    logistic: str = "4pl"
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.judgements.kind

    def item_keys(self) -> list[str]:
        """Distinct item ids, in order of first appearance."""
        return self.judgements.images()

    def chunks(self, size: int = 256) -> Iterator[list[Item]]:
        """The items to score, ``size`` at a time (each id once)."""
        return self.reader(size, set(self.item_keys()))

    def head(self, n: int) -> "BenchSet":
        """The first ``n`` records of each split (all records when there is no split column): a quick
        smoke run on a large set."""
        split = self.columns.get("split")
        if split is None:
            keep = list(range(min(n, len(self.judgements))))
        else:
            seen: dict[str, int] = {}
            keep = []
            for i, s in enumerate(split):
                if seen.get(s, 0) < n:
                    keep.append(i)
                    seen[s] = seen.get(s, 0) + 1
        cols = {k: [v[i] for i in keep] for k, v in self.columns.items()}
        return BenchSet(self.dataset, self.judgements.subset(keep), self.statistics, self.reader, self.image_root, cols,
                        self.tie_mode, self.logistic, self.notes + [f"limited to the first {n} records per split"])


@dataclass(frozen=True)
class DatasetSpec:
    """A supported benchmark set: how to read it and where its authors publish it."""

    name: str
    summary: str
    loader: Callable[[Path, Mapping[str, str]], BenchSet]
    hub: str = ""  # hub dataset id for `bench --dataset NAME` without a path (read with snapshot_download)
    hub_patterns: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def load(self, path: Path, options: Mapping[str, str] | None = None) -> BenchSet:
        options = dict(options or {})
        unknown = set(options) - {"images", *self.options}
        if unknown:
            raise ValueError(f"dataset '{self.name}' has no option(s) {', '.join(sorted(unknown))}; "
                             f"its options: {', '.join(['images', *self.options])}")
        path = Path(path).expanduser()
        if not path.exists():
            raise DataError(str(path), [(str(path), f"{self.name}: data set folder or file not found")])
        return self.loader(path, options)


# -- helpers ------------------------------------------------------------------------------------

def _file_reader(items: Sequence[Item]) -> ChunkReader:
    def read(size: int, needed: set[str] | None) -> Iterator[list[Item]]:
        todo = [it for it in items if needed is None or it.key in needed]
        for start in range(0, len(todo), size):
            yield todo[start:start + size]
    return read


def _find(root: Path, names: Sequence[str], what: str) -> Path:
    """``root`` itself when it is a file, else the first of ``names`` found under it."""
    if root.is_file():
        return root
    for n in names:
        for candidate in (root / n, root / "data" / n):
            if candidate.is_file():
                return candidate
    raise DataError(str(root), [(str(root), f"no {what} found (looked for {', '.join(names)})")])


def _image_root(base: Path, options: Mapping[str, str], candidates: Sequence[str], sample: Sequence[str]) -> Path:
    """The folder the image names are relative to: ``options['images']``, else the first of
    ``candidates`` (under ``base``) holding the first sample image, else ``base``."""
    if options.get("images"):
        root = Path(options["images"]).expanduser()
        if not root.is_absolute():
            root = base / root
        if not root.is_dir():
            raise DataError(str(root), [(str(root), "image folder (option images=) not found")])
        return root
    probe = [s for s in sample[:20] if s]
    for c in candidates:
        root = base / c
        if root.is_dir() and any((root / s).is_file() for s in probe):
            return root
    return base


def _records_with_files(judgements: Judgements, root: Path) -> tuple[Judgements, list[str]]:
    """Drop records with a missing image file; return the kept judgements and a note (or none)."""
    from ..data import record_images

    keep, missing = [], set()
    for i, r in enumerate(judgements.records):
        absent = [k for k in record_images(r) if not (root / k).is_file()]
        if absent:
            missing.update(absent)
        else:
            keep.append(i)
    if not keep:
        shown = ", ".join(sorted(missing)[:5])
        raise DataError(str(root), [(str(root), f"none of the images was found in {root} (e.g. {shown}); "
                                                f"pass the image folder with --dataset-option images=DIR")])
    notes = []
    if missing:
        notes.append(f"{len(missing)} image file(s) listed by the annotations are missing under {root}; "
                     f"{len(judgements) - len(keep)} record(s) that use them were left out")
    return (judgements.subset(keep) if len(keep) < len(judgements) else judgements), notes


def _items_for(judgements: Judgements, root: Path) -> list[Item]:
    seen: dict[str, Item] = {}
    from ..data import record_images

    for r in judgements.records:
        for k in record_images(r):
            if k not in seen:
                seen[k] = Item(k, r.prompt, str(root / k))
    return list(seen.values())


def _rel(name: str) -> str:
    s = str(name).strip().replace("\\", "/")
    return s[2:] if s.startswith("./") else s


def _file_set(dataset: str, judgements: Judgements, root: Path, statistics: tuple[str, ...], notes: list[str],
              logistic: str = "4pl") -> BenchSet:
    judgements, missing = _records_with_files(judgements, root)
    return BenchSet(dataset, judgements, statistics, _file_reader(_items_for(judgements, root)), root,
                    notes=notes + missing, logistic=logistic)


def _load_json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(str(path), [(path.name, f"not valid JSON ({exc.msg} at line {exc.lineno})")]) from None
    if not isinstance(data, list):
        raise DataError(str(path), [(path.name, f"expected a JSON list of entries, found {type(data).__name__}")])
    return data


def _rankings(path: Path, entries: list, images_key: str, ranks_key: str) -> list[Ranking]:
    problems, records = [], []
    for n, e in enumerate(entries):
        where = f"{path.name}, entry {n}"
        if not isinstance(e, dict):
            problems.append((where, f"expected an object, found {type(e).__name__}"))
            continue
        missing = [k for k in ("prompt", images_key, ranks_key) if k not in e]
        if missing:
            problems.append((where, f"missing key(s) {', '.join(missing)}"))
            continue
        images, ranks = e[images_key], e[ranks_key]
        if not isinstance(images, list) or not isinstance(ranks, list) or len(images) != len(ranks):
            problems.append((where, f"{images_key} and {ranks_key} must be lists of the same length"))
            continue
        if len(images) < 2:
            problems.append((where, "a ranking needs at least 2 images"))
            continue
        try:
            values = tuple(float(r) for r in ranks)
        except (TypeError, ValueError):
            problems.append((where, f"{ranks_key} {ranks!r} are not numbers"))
            continue
        if not isinstance(e["prompt"], str):
            problems.append((where, "prompt is not text"))
            continue
        records.append(Ranking(e["prompt"], tuple(_rel(i) for i in images), values, where))
    if problems:
        raise DataError(str(path), problems)
    if not records:
        raise DataError(str(path), [(path.name, "no entries")])
    return records


# -- preference sets ----------------------------------------------------------------------------

def load_hpdv2(path: Path, options: Mapping[str, str]) -> BenchSet:
    """HPD v2 test: ``test.json`` entries ``{"prompt", "image_path": [...], "rank": [...]}``; HPSv2's
    protocol is the per-prompt inversion score (``1 - discordant / C(k, 2)``) averaged over prompts."""
    meta = _find(path, ["test.json"], "HPD v2 test.json")
    records = _rankings(meta, _load_json_list(meta), "image_path", "rank")
    base = meta.parent
    root = _image_root(base, options, ["test", "images", "test_images", "."], records[0].images)
    return _file_set("hpdv2", Judgements("rankings", records, str(meta), True), root,
                     ("inversion", "accuracy"), [])


def load_imagereward(path: Path, options: Mapping[str, str]) -> BenchSet:
    """ImageRewardDB test as ImageReward's ``data/test.json`` (``generations``, ``ranking``); the
    protocol is pooled pairwise accuracy (human ties skipped, equal scores wrong)."""
    meta = _find(path, ["test.json"], "ImageReward test.json")
    records = _rankings(meta, _load_json_list(meta), "generations", "ranking")
    base = meta.parent
    root = _image_root(base, options, ["test_images", "images", "test", "."], records[0].images)
    return _file_set("imagereward", Judgements("rankings", records, str(meta), True), root,
                     ("accuracy", "inversion"), [])


PICKAPIC_COLUMNS = ("caption", "label_0", "image_0_uid", "image_1_uid")


def _split_files(root: Path, split: str) -> list[Path]:
    if root.is_file():
        return [root]
    # hub main branch: data/<split>-00000-of-0000N-<hash>.parquet; older uploads: parquet-<split>-*.parquet;
    # the hub's parquet-converter branch: default/<split>/0000.parquet
    files = list(dict.fromkeys(
        sorted(root.rglob(f"{split}-*.parquet")) + sorted(root.rglob(f"{split}.parquet"))
        + sorted(root.rglob(f"parquet-{split}-*.parquet")) + sorted(root.rglob(f"parquet-{split}.parquet"))
        + sorted(p for p in root.rglob("*.parquet") if p.parent.name == split)))
    if not files:
        raise DataError(str(root), [(str(root), f"no parquet shard for split {split!r} "
                                                f"(expected files named {split}-*.parquet, as on the hub under data/)")])
    return files


def _pickapic_loader(dataset: str, val_split: str, test_split: str) -> Callable[[Path, Mapping[str, str]], BenchSet]:
    def load(path: Path, options: Mapping[str, str]) -> BenchSet:
        import pyarrow.parquet as pq

        if path.is_file():
            raise DataError(str(path), [(str(path), f"{dataset} needs the folder holding the {val_split} and "
                                                    f"{test_split} parquet shards, not one file")])
        records, split, problems = [], [], []
        files: list[Path] = []
        for role, name in (("validation", val_split), ("test", test_split)):
            for f in _split_files(path, name):
                files.append(f)
                pf = pq.ParquetFile(f)
                missing = [c for c in PICKAPIC_COLUMNS + ("jpg_0", "jpg_1") if c not in pf.schema_arrow.names]
                if missing:
                    problems.append((f.name, f"missing column(s) {', '.join(missing)}"))
                    continue
                table = pf.read(columns=list(PICKAPIC_COLUMNS))
                for i, row in enumerate(table.to_pylist()):
                    where = f"{f.name}, row {i + 1}"
                    lab = row["label_0"]
                    if lab is None or (isinstance(lab, float) and math.isnan(lab)):
                        problems.append((where, "label_0 is missing"))
                        continue
                    if not row["image_0_uid"] or not row["image_1_uid"]:
                        problems.append((where, "image uid missing"))
                        continue
                    # eval_preference_predictor.get_label: 0.5 = tie, 1 = image 0, anything else = image 1
                    label = "tie" if lab == 0.5 else ("a" if lab == 1 else "b")
                    records.append(Pair(row["caption"] or "", row["image_0_uid"], row["image_1_uid"], label, 0.0, where))
                    split.append(role)
        if problems:
            raise DataError(str(path), problems)
        judgements = Judgements("pairs", records, str(path), True)

        def read(size: int, needed: set[str] | None) -> Iterator[list[Item]]:
            done: set[str] = set()
            chunk: list[Item] = []
            for f in files:
                pf = pq.ParquetFile(f)
                for batch in pf.iter_batches(batch_size=max(1, size // 2),
                                             columns=["caption", "jpg_0", "jpg_1", "image_0_uid", "image_1_uid"]):
                    for row in batch.to_pylist():
                        for side in ("0", "1"):
                            key = row[f"image_{side}_uid"]
                            if key in done or (needed is not None and key not in needed):
                                continue
                            done.add(key)
                            chunk.append(Item(key, row["caption"] or "", row[f"jpg_{side}"] or b""))
                            if len(chunk) >= size:
                                yield chunk
                                chunk = []
            if chunk:
                yield chunk

        notes = [f"tie threshold chosen on {val_split} ({split.count('validation')} pairs) from {{0, 0.1, ..., 1}} "
                 f"on |p_a - p_b| = |softmax(s / tau) difference| (PickScore's eval_preference_predictor.py); "
                 f"accuracy_ties scored on {test_split} ({split.count('test')} pairs)"]
        return BenchSet(dataset, judgements, ("accuracy_ties", "accuracy"), read, None, {"split": split},
                        tie_mode="pickapic", notes=notes)
    return load


# -- rating (MOS) sets --------------------------------------------------------------------------

def _ratings_set(dataset: str, source: Path, names: list[str], prompts: list[str] | None, mos: list[float],
                 rows: list[str], root: Path, notes: list[str]) -> BenchSet:
    has_prompts = prompts is not None
    records = [Rating(prompts[i] if has_prompts else "", _rel(names[i]), float(mos[i]), rows[i]) for i in range(len(names))]
    if not records:
        raise DataError(str(source), [(source.name, "no images listed")])
    return _file_set(dataset, Judgements("ratings", records, str(source), has_prompts), root,
                     ("srcc", "plcc", "krcc", "plcc_mapped"), notes)


def load_ava(path: Path, options: Mapping[str, str]) -> BenchSet:
    """AVA: ``AVA.txt`` rows ``index image_id c1..c10 tag1 tag2 challenge_id``; MOS = mean of the
    1-10 vote histogram. ``test_list=FILE`` (one image id per line, e.g. ``generic_test.jpgl``)
    restricts the images."""
    meta = _find(path, ["AVA.txt", "AVA_dataset/AVA.txt"], "AVA.txt")
    problems, names, mos, rows = [], [], [], []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{meta.name}, line {n}"
        if len(parts) < 12:
            problems.append((where, f"expected at least 12 fields (index, image id, 10 vote counts), found {len(parts)}"))
            continue
        try:
            counts = [int(x) for x in parts[2:12]]
        except ValueError:
            problems.append((where, "vote counts c1..c10 are not integers"))
            continue
        total = sum(counts)
        if total <= 0:
            problems.append((where, "no votes"))
            continue
        names.append(f"{parts[1]}.jpg")
        mos.append(sum((i + 1) * c for i, c in enumerate(counts)) / total)
        rows.append(where)
    if problems:
        raise DataError(str(meta), problems)
    notes = []
    if options.get("test_list"):
        lst = Path(options["test_list"]).expanduser()
        if not lst.is_absolute():
            lst = meta.parent / lst
        if not lst.is_file():
            raise DataError(str(lst), [(str(lst), "test list (option test_list=) not found")])
        wanted = {f"{w.split()[0].removesuffix('.jpg')}.jpg" for w in lst.read_text().splitlines() if w.strip()}
        keep = [i for i, n in enumerate(names) if n in wanted]
        names, mos, rows = [names[i] for i in keep], [mos[i] for i in keep], [rows[i] for i in keep]
        notes.append(f"restricted to the {len(keep)} images of {lst.name}")
    root = _image_root(meta.parent, options, ["images", "image", "ava_images", "."], names)
    return _ratings_set("ava", meta, names, None, mos, rows, root, notes)


def _column(columns: Sequence[str], *wanted: str) -> str | None:
    lower = {str(c).strip().lower(): c for c in columns}
    for w in wanted:
        if w.lower() in lower:
            return lower[w.lower()]
    return None


def _table_ratings(meta: Path, frame, image_cols: Sequence[str], mos_cols: Sequence[str],
                   prompt_cols: Sequence[str] = (), line_offset: int = 2):
    img_c, mos_c = _column(frame.columns, *image_cols), _column(frame.columns, *mos_cols)
    missing = [w[0] for w, c in ((image_cols, img_c), (mos_cols, mos_c)) if c is None]
    if missing:
        raise DataError(str(meta), [(meta.name, f"missing column(s) {', '.join(missing)}; columns: "
                                                f"{', '.join(map(str, frame.columns))}")])
    prompt_c = _column(frame.columns, *prompt_cols) if prompt_cols else None
    problems, names, mos, prompts, rows = [], [], [], [], []
    for i, (name, value) in enumerate(zip(frame[img_c], frame[mos_c])):
        where = f"{meta.name}, row {i + line_offset}"
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not isinstance(name, str) or not name.strip():
            problems.append((where, f"empty {img_c}"))
            continue
        if not math.isfinite(v):
            problems.append((where, f"{mos_c} {value!r} is not a number"))
            continue
        names.append(name.strip())
        mos.append(v)
        rows.append(where)
        if prompt_c is not None:
            p = frame[prompt_c].iloc[i]
            prompts.append(p if isinstance(p, str) else "")
    if problems:
        raise DataError(str(meta), problems)
    return names, mos, (prompts if prompt_c is not None else None), rows


def load_koniq(path: Path, options: Mapping[str, str]) -> BenchSet:
    """KonIQ-10k: ``koniq10k_scores_and_distributions.csv`` (``image_name``, ``MOS`` on 1-5) or
    ``koniq10k_distributions_sets.csv`` (same + ``set``). ``split=test`` keeps one official set."""
    import pandas as pd

    meta = _find(path, ["koniq10k_scores_and_distributions.csv", "koniq10k_distributions_sets.csv"], "KonIQ-10k score file")
    frame = pd.read_csv(meta)
    notes = []
    if options.get("split"):
        set_c = _column(frame.columns, "set", "split")
        if set_c is None:
            raise DataError(str(meta), [(meta.name, "option split= needs a 'set' column (koniq10k_distributions_sets.csv)")])
        wanted = {"train": "training", "val": "validation"}.get(options["split"], options["split"])
        frame = frame[frame[set_c].astype(str).str.strip().str.lower() == wanted.lower()].reset_index(drop=True)
        notes.append(f"official '{wanted}' set only ({len(frame)} images)")
    names, mos, _, rows = _table_ratings(meta, frame, ["image_name"], ["MOS"])
    root = _image_root(meta.parent, options, ["1024x768", "512x384", "images", "."], names)
    return _ratings_set("koniq10k", meta, names, None, mos, rows, root, notes)


def load_spaq(path: Path, options: Mapping[str, str]) -> BenchSet:
    """SPAQ: ``Annotations/MOS and Image attribute scores.xlsx`` (``Image name``, ``MOS`` on 0-100),
    images in ``TestImage/``. A CSV export with the same columns is read too."""
    import pandas as pd

    meta = _find(path, ["Annotations/MOS and Image attribute scores.xlsx", "MOS and Image attribute scores.xlsx",
                        "Annotations/MOS and Image attribute scores.csv"], "SPAQ MOS file")
    if meta.suffix.lower() in (".xlsx", ".xls"):
        try:
            frame = pd.read_excel(meta)
        except ImportError as exc:
            raise ImportError(f"reading {meta.name} needs openpyxl: pip install openpyxl ({exc})") from None
    else:
        frame = pd.read_csv(meta)
    names, mos, _, rows = _table_ratings(meta, frame, ["Image name", "image_name", "name"], ["MOS"])
    base = meta.parent.parent if meta.parent.name == "Annotations" else meta.parent
    root = _image_root(base, options, ["TestImage", "images", "."], names)
    return _ratings_set("spaq", meta, names, None, mos, rows, root, [])


def _agiqa_loader(dataset: str, column: str) -> Callable[[Path, Mapping[str, str]], BenchSet]:
    def load(path: Path, options: Mapping[str, str]) -> BenchSet:
        import pandas as pd

        meta = _find(path, ["data.csv"], "AGIQA-3K data.csv")
        frame = pd.read_csv(meta, keep_default_na=False)
        names, mos, prompts, rows = _table_ratings(meta, frame, ["name"], [column], ["prompt"])
        root = _image_root(meta.parent, options, ["AGIQA-3K", "AGIQA-3k", "images", "."], names)
        return _ratings_set(dataset, meta, names, prompts, mos, rows, root,
                            [f"human score: {column}; bootstrap resamples prompts (each prompt has images of several models)"])
    return load


DATASETS: dict[str, DatasetSpec] = {}


def _register(spec: DatasetSpec) -> None:
    DATASETS[spec.name] = spec


_PICK_FILES = ("data/{v}-*.parquet", "data/{t}-*.parquet")
_register(DatasetSpec("hpdv2", "HPD v2 test: k images per prompt, human rankings (HPSv2 inversion score)", load_hpdv2))
_register(DatasetSpec("imagereward", "ImageRewardDB test: k-way expert rankings (pooled pairwise accuracy)", load_imagereward))
for _v in ("v1", "v2"):
    for _unique in (True, False):
        _val, _test = ("validation_unique", "test_unique") if _unique else ("validation", "test")
        _name = f"pickapic-{_v}" + ("-unique" if _unique else "")
        _register(DatasetSpec(_name, f"Pick-a-Pic {_v} {_test} pairs with ties (threshold from {_val})",
                              _pickapic_loader(_name, _val, _test), hub=f"yuvalkirstain/pickapic_{_v}",
                              hub_patterns=tuple(p.format(v=_val, t=_test) for p in _PICK_FILES)))
_register(DatasetSpec("ava", "AVA: aesthetic vote histograms -> mean score 1-10", load_ava, options=("test_list",)))
_register(DatasetSpec("koniq10k", "KonIQ-10k: in-the-wild photos, MOS 1-5", load_koniq, options=("split",)))
_register(DatasetSpec("spaq", "SPAQ: smartphone photos, MOS 0-100", load_spaq))
_register(DatasetSpec("agiqa-3k", "AGIQA-3K: AI-generated images, perceptual quality MOS", _agiqa_loader("agiqa-3k", "mos_quality")))
_register(DatasetSpec("agiqa-3k-align", "AGIQA-3K: AI-generated images, text alignment MOS", _agiqa_loader("agiqa-3k-align", "mos_align")))


def get_dataset(name: str) -> DatasetSpec:
    key = name.strip().lower()
    if key not in DATASETS:
        import difflib

        close = difflib.get_close_matches(key, list(DATASETS), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown benchmark data set {name!r}.{hint} Known: {', '.join(DATASETS)}")
    return DATASETS[key]


def resolve_path(spec: DatasetSpec, path: str | None) -> Path:
    """The local folder of a data set: ``path``, or (for hub-hosted sets) a ``snapshot_download`` of the
    files the protocol needs."""
    if path:
        return Path(path).expanduser()
    if not spec.hub:
        raise ValueError(f"data set '{spec.name}' is not read from the hub: give its folder as --dataset {spec.name}:PATH "
                         f"(see docs/bench.md for where to download it)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.hub, repo_type="dataset", allow_patterns=list(spec.hub_patterns)))
    except Exception as exc:  # offline, gated, renamed: say which and how to work around it
        raise OSError(f"could not download {spec.hub} ({type(exc).__name__}: {exc}); download the files "
                      f"{', '.join(spec.hub_patterns)} yourself and pass --dataset {spec.name}:PATH") from None
