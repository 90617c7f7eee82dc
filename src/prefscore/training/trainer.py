"""Training on human judgements: heads on cached frozen features (fast path), or CLIP fine-tuning.

>>> from prefscore.training import TrainConfig, train
>>> result = train("prefs.csv", "my-model", TrainConfig(objective="pairwise", backbone="stats"))
>>> result.metrics["pairwise_accuracy"], result.metrics["pairwise_accuracy_ci"]
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..data import Judgements, Pair, Rating, Ranking, load_judgements, rating_pairs
from .cache import EmbeddingCache
from .features import FEATURE_MODES, build_extractor, combine, feature_dim
from .heads import HeadConfig, ScoreHead
from .losses import bradley_terry_loss, rating_loss, softmax_choice_loss
from .modeldir import write_model_dir
from .report import (
    PairOutcome,
    bootstrap_accuracy_ci,
    choose_tie_threshold,
    pairwise_accuracy,
    preference_probability,
    rating_metrics,
    tie_aware_accuracy,
    tie_chance,
)

OBJECTIVES = ("pairwise", "choice", "rating")


@dataclass
class TrainConfig:
    """Settings of ``prefscore train``.

    objective: ``"pairwise"`` (Bradley-Terry on pairs; rankings expanded to their C(k,2) strictly
      ordered pairs; ties as PickScore's 0.5/0.5 target), ``"choice"`` (softmax over each ranking's
      k candidates, target spread over the best-ranked; pairs are k = 2) or ``"rating"`` (MSE).
    backbone: ``"stats"`` (weight-free image statistics) or a CLIP source (folder or hub id);
      ``processor``: where that CLIP's tokenizer/preprocessor config is, if not with the weights.
    features: ``"auto"`` (image+text when the backbone has a text tower and the data has prompts),
      ``"image"`` or ``"image+text"``.
    temperature: tau of the preference probability ``sigmoid((s_a - s_b) / tau)`` used in the loss
      and by ``compare()``; a head learns its own scale, so 1 is the natural value there.
    margin: extra margin (score units) added to every strict pair's own ``margin`` column.
    lr / weight_decay: AdamW; batch_size: examples (pairs, groups or ratings) per step.
    max_epochs / patience: early stopping on the validation loss (best epoch kept).
    val_fraction / seed: the by-prompt split (ignored when a validation file is given) and all
      randomness (initialisation, shuffling, bootstrap).
    bootstrap: replicates of the validation CI (0 disables it).
    finetune: a :class:`~prefscore.training.finetune.FinetuneConfig` to fine-tune the CLIP instead.
    """

    objective: str = "pairwise"
    backbone: str = "stats"
    processor: str | None = None
    head: HeadConfig = field(default_factory=HeadConfig)
    features: str = "auto"
    temperature: float = 1.0
    margin: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 300
    patience: int = 20
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    embed_batch_size: int = 32
    cache_dir: str | None = None
    bootstrap: int = 1000
    finetune: object | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.features not in ("auto",) + FEATURE_MODES:
            raise ValueError(f"features must be 'auto', 'image' or 'image+text', not {self.features!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, not {self.margin}")
        for name in ("batch_size", "max_epochs", "embed_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["head"] = self.head.as_dict()
        d["finetune"] = self.finetune.as_dict() if self.finetune is not None else None
        return d


@dataclass
class TrainResult:
    """``out``: the model directory; ``metrics``: validation numbers (also in ``prefscore.json``);
    ``history``: per epoch/step logs; ``val_scores``: ``(image, prompt, score)`` the trained model gave
    each validation image before saving (a reloaded model must give the same)."""

    out: Path
    metrics: dict
    history: list[dict]
    meta: dict
    val_scores: list[tuple[str, str, float]]


def check_objective(kind: str, objective: str, source: str = "") -> None:
    if objective == "rating" and kind != "ratings":
        raise ValueError(f"{source}: objective 'rating' needs ratings (image, score), but the data are {kind}")
    if objective != "rating" and kind == "ratings":
        raise ValueError(f"{source}: the data are ratings; use objective 'rating' (pairwise/choice need pairs or rankings)")


def prepare_data(data, val, config: TrainConfig) -> tuple[Judgements, Judgements, dict]:
    """Load, check and split: ``(train, val, description of the data for the card)``."""
    full = data if isinstance(data, Judgements) else load_judgements(data)
    check_objective(full.kind, config.objective, full.source)
    if val is not None:
        val_j = val if isinstance(val, Judgements) else load_judgements(val)
        check_objective(val_j.kind, config.objective, val_j.source)
        train_j = full
        overlap = set(train_j.prompts()) & set(val_j.prompts()) if full.has_prompts and val_j.has_prompts else set()
        split = f"given validation file ({len(overlap)} prompts also in training)"
    else:
        train_j, val_j = full.split(config.val_fraction, config.seed)
        split = (f"by prompt, val_fraction={config.val_fraction}, seed={config.seed}"
                 if full.has_prompts else f"by record (no prompts), val_fraction={config.val_fraction}, seed={config.seed}")
    desc = {"train_file": train_j.source, "val_file": val_j.source if val is not None else None, "kind": full.kind,
            "split": split}
    for name, j in (("train", train_j), ("val", val_j)):
        desc[f"{name}_records"] = len(j)
        desc[f"{name}_groups"] = len(set(j.groups))
        desc[f"{name}_images"] = len(j.images())
        if j.kind != "ratings":
            desc[f"{name}_pairs"] = len(j.pairs())
    return train_j, val_j, desc


def train(data, out: str | Path, config: TrainConfig | None = None, val=None, progress: bool = False) -> TrainResult:
    """Train a model on ``data`` (a judgement file or :class:`~prefscore.data.Judgements`) into ``out``.

    ``val``: a separate validation file (otherwise a by-prompt split of ``data``). Returns a
    :class:`TrainResult`; ``prefscore.load(out)`` scores with the trained model.
    """
    config = config or TrainConfig()
    out = Path(out).expanduser()
    train_j, val_j, desc = prepare_data(data, val, config)
    if config.finetune is not None:
        from .finetune import finetune

        return finetune(train_j, val_j, desc, out, config, progress=progress)
    return train_head(train_j, val_j, desc, out, config, progress=progress)


# -- the fast path --------------------------------------------------------------------------------

class _Examples:
    """Index tensors of one split: image/prompt rows of each pair, group or rating."""

    def __init__(self, j: Judgements, objective: str, img_row: dict, prompt_row: dict, extra_margin: float):
        self.objective = objective
        groups = j.groups
        self.outcome_pairs: list[Pair] = []
        if objective == "rating":
            recs: list[Rating] = j.records  # type: ignore[assignment]
            self.i = torch.tensor([img_row[r.image] for r in recs])
            self.p = torch.tensor([prompt_row[r.prompt] for r in recs])
            self.y = torch.tensor([r.score for r in recs], dtype=torch.float32)
            self.n = len(recs)
            self.outcome_pairs = rating_pairs(recs, by_prompt=j.has_prompts)
            self.outcome_groups = [p.prompt if j.has_prompts else p.row for p in self.outcome_pairs]
            return
        pairs, pair_groups = [], []
        for rec, g in zip(j.records, groups):
            for p in (rec.pairs() if isinstance(rec, Ranking) else [rec]):
                pairs.append(p)
                pair_groups.append(g)
        self.outcome_pairs, self.outcome_groups = pairs, pair_groups
        if objective == "pairwise":
            self.a = torch.tensor([img_row[p.image_a] for p in pairs])
            self.b = torch.tensor([img_row[p.image_b] for p in pairs])
            self.p = torch.tensor([prompt_row[p.prompt] for p in pairs])
            self.t = torch.tensor([p.target for p in pairs], dtype=torch.float32)
            self.m = torch.tensor([p.margin + extra_margin for p in pairs], dtype=torch.float32)
            self.n = len(pairs)
            return
        k = max(len(r.images) if isinstance(r, Ranking) else 2 for r in j.records)
        idx = torch.zeros(len(j), k, dtype=torch.long)
        mask = torch.zeros(len(j), k, dtype=torch.bool)
        target = torch.zeros(len(j), k)
        for g, rec in enumerate(j.records):
            if isinstance(rec, Ranking):
                imgs, ranks = rec.images, np.asarray(rec.ranks)
                best = (ranks == ranks.min()).astype(np.float32)
                tgt = best / best.sum()
            else:
                imgs, tgt = (rec.image_a, rec.image_b), np.array([rec.target, 1 - rec.target], np.float32)
            idx[g, : len(imgs)] = torch.tensor([img_row[x] for x in imgs])
            mask[g, : len(imgs)] = True
            target[g, : len(imgs)] = torch.from_numpy(np.asarray(tgt, np.float32))
        self.idx, self.mask, self.target = idx, mask, target
        self.p = torch.tensor([prompt_row[r.prompt] for r in j.records])
        self.n = len(j)


class _Scorer:
    """Scores of (image row, prompt row) index tensors through a head."""

    def __init__(self, images: torch.Tensor, texts: torch.Tensor | None, mode: str):
        self.images, self.texts, self.mode = images, texts, mode

    def features(self, i: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return combine(self.images[i], self.texts[p] if self.texts is not None else None, self.mode)

    def __call__(self, head, i: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``i``: ``(B,)`` image rows with ``p`` ``(B,)`` prompt rows, or ``(B, k)`` candidates of one prompt each."""
        if i.dim() == 2:
            p = p[:, None].expand_as(i)
        return head(self.features(i.reshape(-1), p.reshape(-1))).reshape(i.shape)


def _loss(head, scorer: _Scorer, ex: _Examples, sel: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    if ex.objective == "rating":
        return rating_loss(scorer(head, ex.i[sel], ex.p[sel]), ex.y[sel])
    if ex.objective == "pairwise":
        sa = scorer(head, ex.a[sel], ex.p[sel])
        sb = scorer(head, ex.b[sel], ex.p[sel])
        return bradley_terry_loss(sa, sb, ex.t[sel], config.temperature, ex.m[sel])
    idx, mask = ex.idx[sel], ex.mask[sel]
    scores = scorer(head, idx, ex.p[sel])
    return softmax_choice_loss(scores, ex.target[sel], config.temperature, mask)


def _outcome(head, scorer: _Scorer, ex: _Examples, img_row: dict, prompt_row: dict) -> PairOutcome:
    pairs = ex.outcome_pairs
    with torch.no_grad():
        a = torch.tensor([img_row[p.image_a] for p in pairs], dtype=torch.long)
        b = torch.tensor([img_row[p.image_b] for p in pairs], dtype=torch.long)
        p_ = torch.tensor([prompt_row[p.prompt] for p in pairs], dtype=torch.long)
        sa = scorer(head, a, p_).numpy().astype(np.float64) if len(pairs) else np.zeros(0)
        sb = scorer(head, b, p_).numpy().astype(np.float64) if len(pairs) else np.zeros(0)
    return PairOutcome(sa, sb, np.array([p.target for p in pairs]), np.array(ex.outcome_groups, dtype=object))


class _Bar:
    """A rich progress bar over epochs showing the loss and validation accuracy (no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn())
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, info="")

    def update(self, info: str, advance: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=advance, info=info)

    def close(self) -> None:
        if self.bar is not None:
            task = self.bar.tasks[0]
            self.bar.update(self.task, total=task.completed)  # early stopping ends the bar where it stopped
            self.bar.stop()


def _fmt_log(h: dict) -> str:
    parts = [f"loss {h['train_loss']:.4f}"]
    if h.get("val_loss") is not None:
        parts.append(f"val loss {h['val_loss']:.4f}")
    if h.get("val_accuracy") is not None and not math.isnan(h["val_accuracy"]):
        parts.append(f"val acc {h['val_accuracy']:.3f}")
    return "  ".join(parts)


@contextlib.contextmanager
def _threads(n: int):
    """Run with ``n`` torch threads: a head's small matrix products are fastest (and far less hurt by
    a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_head(train_j: Judgements, val_j: Judgements, desc: dict, out: Path, config: TrainConfig,
               progress: bool = False) -> TrainResult:
    """Fit a head on cached backbone features (see :class:`TrainConfig`) and write the model directory."""
    t0 = time.time()
    torch.manual_seed(config.seed)
    extractor = build_extractor(config.backbone, config.device, "float32", config.processor)
    mode = config.features
    if mode == "auto":
        mode = "image+text" if extractor.has_text and train_j.has_prompts else "image"
    if mode == "image+text" and not extractor.has_text:
        raise ValueError(f"backbone {config.backbone!r} has no text tower: use features='image'")
    cache = EmbeddingCache(config.cache_dir)
    images = list(dict.fromkeys(train_j.images() + val_j.images()))
    img_row = {p: i for i, p in enumerate(images)}
    img_feats = torch.from_numpy(cache.image_embeddings(extractor, images, config.embed_batch_size, config.device, progress=progress))
    prompts = list(dict.fromkeys(train_j.prompts() + val_j.prompts()))
    prompt_row = {p: i for i, p in enumerate(prompts)}
    txt_feats = torch.from_numpy(cache.text_embeddings(extractor, prompts)) if mode == "image+text" else None
    scorer = _Scorer(img_feats, txt_feats, mode)

    tr = _Examples(train_j, config.objective, img_row, prompt_row, config.margin)
    va = _Examples(val_j, config.objective, img_row, prompt_row, config.margin) if len(val_j) else None
    if tr.n == 0:
        raise ValueError(f"{train_j.source}: no training examples (rankings with all-equal ranks make no pairs)")

    head = ScoreHead(feature_dim(extractor, mode), config.head)
    slots = _train_slots(tr, train_j)
    head.fit_standardisation(scorer.features(slots[0], slots[1]))
    if config.objective == "rating":
        last = head.net if isinstance(head.net, torch.nn.Linear) else head.net[-1]
        with torch.no_grad():
            last.bias.fill_(float(tr.y.mean()))
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)

    history: list[dict] = []
    best, best_state, best_epoch, bad = math.inf, copy.deepcopy(head.state_dict()), 0, 0
    bar = _Bar(progress, config.max_epochs, "training head")
    single = _threads(1) if torch.device(config.device).type == "cpu" else contextlib.nullcontext()
    try:
        with single:
            for epoch in range(1, config.max_epochs + 1):
                head.train()
                perm = torch.randperm(tr.n, generator=gen)
                total, count = 0.0, 0
                for s in range(0, tr.n, config.batch_size):
                    sel = perm[s:s + config.batch_size]
                    loss = _loss(head, scorer, tr, sel, config)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(sel)
                    count += len(sel)
                head.eval()
                log = {"epoch": epoch, "train_loss": total / count}
                with torch.no_grad():
                    if va is not None and va.n:
                        log["val_loss"] = float(_loss(head, scorer, va, torch.arange(va.n), config))
                        log["val_accuracy"] = pairwise_accuracy(_outcome(head, scorer, va, img_row, prompt_row))[0]
                history.append(log)
                bar.update(_fmt_log(log))
                monitored = log.get("val_loss", log["train_loss"])
                if monitored < best - 1e-6:
                    best, best_state, best_epoch, bad = monitored, copy.deepcopy(head.state_dict()), epoch, 0
                else:
                    bad += 1
                    if bad >= config.patience:
                        break
    finally:
        bar.close()
    head.load_state_dict(best_state)
    head.eval()

    metrics, tie_t = _evaluate(head, scorer, tr, va, img_row, prompt_row, config, val_j)
    val_scores = []
    if len(val_j):
        with torch.no_grad():
            slots_v = _record_slots(val_j)
            i = torch.tensor([img_row[x] for x, _ in slots_v], dtype=torch.long)
            p = torch.tensor([prompt_row[q] for _, q in slots_v], dtype=torch.long)
            s = scorer(head, i, p).tolist() if slots_v else []
        val_scores = [(x, q, v) for (x, q), v in zip(slots_v, s)]
    meta = {
        "kind": "head",
        "objective": config.objective,
        "prompt_aware": mode == "image+text",
        "features": mode,
        "backbone": extractor.describe(),
        "head": config.head.as_dict(),
        "temperature": config.temperature,
        "tie_threshold": tie_t,
        "data": desc,
        "metrics": metrics,
        "config": config.as_dict(),
        "stopped": f"epoch {history[-1]['epoch']}",
        "best": f"epoch {best_epoch}",
        "train_seconds": round(time.time() - t0, 2),
        "prefscore_version": __version__,
    }
    write_model_dir(out, meta, history, head)
    return TrainResult(out, metrics, history, meta, val_scores)


def _record_slots(j: Judgements) -> list[tuple[str, str]]:
    """Distinct (image, prompt) combinations of a split."""
    slots: dict[tuple[str, str], None] = {}
    for r in j.records:
        imgs = (r.image_a, r.image_b) if isinstance(r, Pair) else r.images if isinstance(r, Ranking) else (r.image,)
        for x in imgs:
            slots.setdefault((x, r.prompt))
    return list(slots)


def _train_slots(ex: _Examples, j: Judgements) -> tuple[torch.Tensor, torch.Tensor]:
    if ex.objective == "rating":
        return ex.i, ex.p
    if ex.objective == "pairwise":
        return torch.cat([ex.a, ex.b]), torch.cat([ex.p, ex.p])
    return ex.idx[ex.mask], ex.p[:, None].expand_as(ex.idx)[ex.mask]


def _evaluate(head, scorer, tr: _Examples, va: _Examples | None, img_row, prompt_row, config: TrainConfig,
              val_j: Judgements) -> tuple[dict, float | None]:
    """Validation metrics and the tie threshold (picked on the training split)."""
    metrics: dict = {}
    tie_t = None
    if config.objective != "rating":
        tie_t = choose_tie_threshold(_outcome(head, scorer, tr, img_row, prompt_row), config.temperature)
    if va is None or va.n == 0:
        return metrics, tie_t
    o = _outcome(head, scorer, va, img_row, prompt_row)
    acc, n = pairwise_accuracy(o)
    lo, hi, how = bootstrap_accuracy_ci(o, config.bootstrap, config.seed)
    metrics.update(pairwise_accuracy=acc, strict_pairs=n, pairwise_accuracy_ci=[lo, hi],
                   pairwise_accuracy_ci_resampled=how)
    if config.objective != "rating":
        metrics["val_ties"] = int((o.target == 0.5).sum())
        if metrics["val_ties"]:
            metrics["tie_aware_accuracy"] = tie_aware_accuracy(o, config.temperature, tie_t)
            metrics["tie_chance"] = tie_chance(o, tie_t)
            metrics["predicted_ties"] = int((np.abs(2 * preference_probability(o, config.temperature) - 1) <= tie_t).sum())
    else:
        with torch.no_grad():
            pred = scorer(head, va.i, va.p).numpy()
        metrics.update(rating_metrics(pred, va.y.numpy(), config.bootstrap, config.seed))
    return metrics, tie_t

