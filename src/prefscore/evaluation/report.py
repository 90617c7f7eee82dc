"""A self-contained HTML report (inline CSS, plots as inline PNG, thumbnails as data: URIs; opens with
no network) plus the same tables as CSV and JSON.

Sections: warnings, agreement with human judgements (with bootstrap intervals), paired tests,
breakdowns, before/after changes, score distributions, the metric-by-metric correlation heatmap, the
disagreement list, "pretty but wrong" images, and per-metric galleries sorted by score.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .scores import ScoreTable

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c4c9d4;font-size:13px}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #e1e4ea;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f0f2f6}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#66708a;font-size:12px}.best{font-weight:700}
.finding{border-left:4px solid #d08a00;background:#fff8e6;padding:6px 10px;margin:6px 0;font-size:14px}
.finding.info{border-color:#4a78c2;background:#eef4ff}.finding .kind{font-weight:600;margin-right:6px}
.ok{color:#2d7a3a}.muted{color:#66708a;font-size:12px}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.card{width:168px;font-size:12px}
.card img,.thumb{max-width:160px;max-height:160px;border-radius:4px;display:block;background:#eee}
.card .cap{margin-top:3px;word-break:break-all}.missing{width:160px;height:100px;background:#eee;display:flex;
align-items:center;justify-content:center;color:#888;font-size:12px;border-radius:4px}
img.plot{max-width:100%;height:auto}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


class _Thumbs:
    """Thumbnails as JPEG data: URIs, cached per path."""

    def __init__(self, size: int):
        self.size = size
        self.cache: dict[str, str | None] = {}

    def __call__(self, path: str) -> str:
        if path not in self.cache:
            self.cache[path] = self._make(path)
        uri = self.cache[path]
        if uri is None:
            return f'<div class="missing" title="{_e(path)}">image unavailable</div>'
        return f'<img class="thumb" alt="{_e(Path(path).name)}" title="{_e(path)}" src="{uri}">'

    def _make(self, path: str) -> str | None:
        from PIL import Image, ImageOps

        from ..errors import ImageError
        from ..images import load_image

        try:
            with load_image(path, path) as im:
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    bg = Image.new("RGB", rgba.size, (255, 255, 255))
                    bg.paste(rgba, mask=rgba.getchannel("A"))
                    im = bg
                else:
                    im = im.convert("RGB")
                im.thumbnail((self.size, self.size))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=82)
        except (ImageError, OSError, ValueError, SyntaxError):
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def distribution_plot(scores: ScoreTable) -> str:
    """Histograms of every score column (one small panel each) as a PNG data: URI."""
    from matplotlib.figure import Figure

    cols = scores.columns
    n = len(cols)
    ncol = min(n, 4)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(3.2 * ncol, 2.4 * nrow))
    for k, c in enumerate(cols):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        v = scores.values[c]
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=min(30, max(5, int(np.sqrt(v.size)) * 2)), color="#4a78c2", edgecolor="white")
            ax.axvline(float(np.median(v)), color="#d08a00", lw=1.2)
        arrow = "↑" if scores.higher_is_better.get(c, True) else "↓"
        ax.set_title(f"{c} ({arrow} better)", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)


def correlation_matrix(scores: ScoreTable) -> tuple[list[str], np.ndarray]:
    """Spearman correlations between score columns over the images scored by both (oriented)."""
    from .stats import srcc

    cols = scores.columns
    m = np.eye(len(cols))
    for i in range(len(cols)):
        for j in range(i + 1, len(cols)):
            a, b = scores.values[cols[i]], scores.values[cols[j]]
            ok = np.isfinite(a) & np.isfinite(b)
            sign = (1 if scores.higher_is_better.get(cols[i], True) else -1) * (1 if scores.higher_is_better.get(cols[j], True) else -1)
            m[i, j] = m[j, i] = sign * srcc(a[ok], b[ok]) if ok.sum() > 1 else math.nan
    return cols, m


def heatmap_plot(cols: list[str], m: np.ndarray) -> str:
    from matplotlib.figure import Figure

    size = 1.0 + 0.75 * len(cols)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.nan_to_num(m, nan=0.0), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(cols)))
    ax.set_yticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=40, ha="right", fontsize=8)
    ax.set_yticklabels(cols, fontsize=8)
    for i in range(len(cols)):
        for j in range(len(cols)):
            ax.text(j, i, "–" if not math.isfinite(m[i, j]) else f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(np.nan_to_num(m[i, j])) > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("Spearman (oriented)", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], id_: str | None = None, raw: bool = True) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(c if raw else f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    ident = f' id="{_e(id_)}"' if id_ else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ci_cell(est, low, high, best: bool = False, boot: bool = False) -> str:
    """Estimate and interval; ``boot``: a bootstrap was asked for, so a missing interval reads "CI n/a"."""
    cls = "num best" if best else "num"
    if math.isfinite(float(low if low is not None else math.nan)):
        ci = f'<br><span class="ci">[{_fmt(low)}, {_fmt(high)}]</span>'
    else:
        ci = '<br><span class="ci na">CI n/a</span>' if boot else ""
    return f'<td class="{cls}">{_fmt(est)}{ci}</td>'


def _agreement_section(evaluation) -> str:
    from .agreement import STAT_LABELS

    t = evaluation.table
    level = evaluation.settings.get("level", 0.95)
    overall = t[t.group == "all"]
    stats = list(dict.fromkeys(overall.statistic))
    from .agreement import resampling_label

    boot = bool(evaluation.settings.get("n_boot"))
    parts = [f'<section id="agreement"><h2>Agreement with human judgements</h2>'
             f'<p class="muted">{_e(evaluation.kind)} from {_e(evaluation.settings.get("source", ""))}: '
             f'{evaluation.settings.get("n_records", "")} records. Estimates with {level:.0%} bootstrap intervals '
             f'(<span id="resampling">{_e(resampling_label(evaluation.settings))}</span>, '
             f'{evaluation.settings.get("n_boot")} replicates).</p>']
    rows = []
    for metric in evaluation.metrics:
        cells = [f"<td>{_e(metric)}</td>"]
        for s in stats:
            r = overall[(overall.metric == metric) & (overall.statistic == s)]
            if r.empty:
                cells.append("<td>–</td>")
                continue
            r = r.iloc[0]
            col = overall[overall.statistic == s].estimate
            best = (r.estimate == (col.min() if s == "rmse_mapped" else col.max())) and len(evaluation.metrics) > 1
            cells.append(_ci_cell(r.estimate, r.low, r.high, bool(best), boot))
        n = overall[overall.metric == metric].n.max()
        u = overall[overall.metric == metric].units.max()
        cells.append(f'<td class="num">{_fmt(int(n))} / {_fmt(int(u))}</td>')
        rows.append(cells)
    parts.append(_table(["metric"] + stats + ["n / units"], rows, "agreement-table"))
    parts.append("<ul class=\"muted\">" + "".join(f"<li><b>{_e(s)}</b>: {_e(STAT_LABELS.get(s, s))}</li>" for s in stats) + "</ul>")
    if evaluation.thresholds:
        parts.append("<p class=\"muted\">Tie thresholds (" + _e(evaluation.settings.get("tie_mode", "")) + "): " +
                     "; ".join(f"{_e(m)}: {', '.join(_fmt(x, 4) for x in v)}" for m, v in evaluation.thresholds.items()) + "</p>")
    if evaluation.notes:
        parts.append("<ul class=\"muted\">" + "".join(f"<li>{_e(n)}</li>" for n in evaluation.notes) + "</ul>")
    tests = evaluation.tests
    if len(tests):
        trows = [[f"<td>{_e(r.statistic)}</td>", f"<td>{_e(r.metric_a)} − {_e(r.metric_b)}</td>",
                  _ci_cell(r.difference, r.low, r.high, boot=boot),
                  f'<td class="num">{"n/a" if not math.isfinite(r.p_value) else _fmt(r.p_value, 4)}</td>']
                 for r in tests.itertuples()]
        parts.append('<h3>Paired bootstrap tests</h3>')
        parts.append(_table(["statistic", "difference", "estimate [CI]", "p-value"], trows, "tests-table"))
    groups = [g for g in dict.fromkeys(t.group) if g != "all"]
    for g in groups:
        sub = t[t.group == g]
        brows = []
        for (level_, metric), frame in sub.groupby(["level", "metric"], sort=False):
            cells = [f"<td>{_e(level_)}</td>", f"<td>{_e(metric)}</td>"]
            for s in stats:
                r = frame[frame.statistic == s]
                cells.append(_ci_cell(r.iloc[0].estimate, r.iloc[0].low, r.iloc[0].high, boot=boot) if not r.empty else "<td>–</td>")
            cells.append(f'<td class="num">{_fmt(int(frame.n.max()))}</td>')
            first = frame.iloc[0]
            cells.append(f"<td>{_e(f'{int(first.resampled_units)} {first.resampled}s' if first.resampled else ('n/a' if boot else '–'))}</td>")
            brows.append(cells)
        parts.append(f"<h3>By {_e(g)}</h3>")
        parts.append(_table([g, "metric"] + stats + ["n", "resampled"], brows, f"breakdown-{g}"))
    parts.append("</section>")
    return "".join(parts)


def _findings_section(findings) -> str:
    if not findings:
        return ('<section id="warnings"><h2>Warnings</h2><p class="ok">No reward-hacking or bias warnings were '
                'raised.</p></section>')
    items = "".join(f'<div class="finding {_e(f.severity)}"><span class="kind">{_e(f.kind)}</span>{_e(f.message)}</div>'
                    for f in findings)
    return f'<section id="warnings"><h2>Warnings</h2>{items}</section>'


def _image_rows(frame, thumbs: _Thumbs, metric_cols: Sequence[str], extra: Sequence[str]) -> list[list[str]]:
    rows = []
    for r in frame.to_dict(orient="records"):
        cells = [f"<td>{thumbs(r['image'])}</td>",
                 f"<td>{_e(Path(r['image']).name)}" + (f"<br><span class=\"muted\">{_e(r['prompt'])}</span>" if r.get("prompt") else "") + "</td>"]
        cells += [f'<td class="num">{_fmt(r[c]) if isinstance(r[c], float) else _e(r[c])}</td>' for c in extra]
        cells += [f'<td class="num">{_fmt(r[c])}</td>' for c in metric_cols]
        rows.append(cells)
    return rows


def write_report(
    path: str | Path,
    *,
    scores: ScoreTable | None = None,
    evaluation=None,
    checks=None,
    calibration=None,
    title: str = "prefscore report",
    gallery_size: int = 12,
    thumb_px: int = 160,
    tables_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write the HTML report and its tables; returns the paths written.

    ``scores``: per-image scores (default: those of ``evaluation``). ``evaluation``: an
    :class:`EvaluationResult`. ``checks``: :class:`prefscore.evaluation.warnings.Checks` (computed here
    from the scores when None). ``calibration``: a composite calibration to describe. Tables go to
    ``tables_dir`` (default: ``<report name>_tables`` beside the HTML): ``agreement.csv``,
    ``tests.csv``, ``scores.csv``, ``correlations.csv``, ``disagreement.csv``, ``flagged.csv``,
    ``changes.csv`` and ``report.json``.
    """
    import pandas as pd

    from .. import __version__
    from .warnings import run_checks

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tables = Path(tables_dir) if tables_dir is not None else path.with_name(path.stem + "_tables")
    tables.mkdir(parents=True, exist_ok=True)
    if scores is None:
        if evaluation is None:
            raise ValueError("write_report needs scores= or evaluation=")
        scores = evaluation.item_scores
    if checks is None:
        checks = run_checks(scores)
    thumbs = _Thumbs(thumb_px)
    written: dict[str, Path] = {"html": path}
    if evaluation is None:  # the evaluation writes its own item_scores.csv
        scores.frame().to_csv(tables / "scores.csv", index=False)
        written["scores_csv"] = tables / "scores.csv"

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<header><h1>{_e(title)}</h1><p>prefscore {__version__} · {now} · {len(scores)} images · "
            f"metrics: {_e(', '.join(scores.columns))}</p></header><main>"]
    body.append(_findings_section(checks.findings))
    summary: dict = {"title": title, "created": now, "prefscore_version": __version__, "n_images": len(scores),
                     "metrics": scores.columns, "findings": [f.to_dict() for f in checks.findings]}
    if evaluation is not None:
        body.append(_agreement_section(evaluation))
        written.update({f"evaluation_{k}": v for k, v in evaluation.save(tables).items()})
        summary["evaluation"] = evaluation.to_dict()
    if checks.changes is not None and len(checks.changes):
        ch = checks.changes
        crow = [[f"<td>{_e(r.metric)}</td>", f'<td class="num">{_fmt(r.before)}</td>', f'<td class="num">{_fmt(r.after)}</td>',
                 _ci_cell(r.change_sd, r.low_sd, r.high_sd), f"<td>{'by prompt' if r.paired else 'independent'}</td>"]
                for r in ch.itertuples()]
        body.append('<section id="changes"><h2>Before → after</h2><p class="muted">Change of each metric\'s mean in '
                    'standard deviations of the before set (positive = better), with bootstrap intervals.</p>'
                    + _table(["metric", "before", "after", "change (SD) [CI]", "pairing"], crow, "changes-table") + "</section>")
        ch.to_csv(tables / "changes.csv", index=False)
        written["changes_csv"] = tables / "changes.csv"
        summary["changes"] = json.loads(ch.to_json(orient="records"))
    if calibration is not None:
        crow = [[f"<td>{_e(c.column)}</td>", f"<td>{_e(c.normaliser.kind)}</td>",
                 f"<td>{'higher' if c.higher_is_better else 'lower'}</td>", f'<td class="num">{_fmt(c.weight, 4)}</td>']
                for c in calibration.components]
        body.append(f'<section id="composite"><h2>Composite {_e(calibration.fingerprint)}</h2><p class="muted">weights '
                    f'{_e(calibration.weights_from)}; reference n = {_e(calibration.reference.get("n", "?"))}</p>'
                    + _table(["component", "normaliser", "better", "weight"], crow) + "</section>")
        summary["composite"] = calibration.to_dict()

    body.append(f'<section id="distributions"><h2>Score distributions</h2><img class="plot" alt="score distributions" '
                f'src="{distribution_plot(scores)}"><p class="muted">Orange line: median.</p></section>')
    if len(scores.columns) >= 2:
        cols, m = correlation_matrix(scores)
        pd.DataFrame(m, index=cols, columns=cols).to_csv(tables / "correlations.csv")
        written["correlations_csv"] = tables / "correlations.csv"
        summary["correlations"] = {"metrics": cols, "spearman": [[None if not math.isfinite(x) else float(x) for x in row] for row in m]}
        body.append(f'<section id="correlations"><h2>Metric-by-metric correlation</h2><img class="plot" '
                    f'alt="correlation heatmap" src="{heatmap_plot(cols, m)}"><p class="muted">Spearman correlation of '
                    f'the oriented scores (higher = better for every metric) over the images.</p></section>')
    if checks.disagreement is not None and len(checks.disagreement):
        dis = checks.disagreement
        pcols = [c for c in dis.columns if c.endswith(":percentile")]
        dis.to_csv(tables / "disagreement.csv", index=False)
        written["disagreement_csv"] = tables / "disagreement.csv"
        summary["disagreement"] = json.loads(dis.to_json(orient="records"))
        body.append('<section id="disagreement"><h2>Where the metrics disagree most</h2><p class="muted">Percentile '
                    'rank of each image under each metric (1 = best in this set); spread = highest − lowest.</p>'
                    + _table(["image", "name / prompt", "spread", "best by", "worst by"] + [c.split(":")[0] for c in pcols],
                             _image_rows(dis, thumbs, pcols, ["spread", "best_by", "worst_by"]), "disagreement-table")
                    + "</section>")
    if checks.flagged is not None and len(checks.flagged):
        fl = checks.flagged
        fl.to_csv(tables / "flagged.csv", index=False)
        written["flagged_csv"] = tables / "flagged.csv"
        body.append('<section id="pretty-but-wrong"><h2>High aesthetics, low prompt alignment</h2>'
                    + _table(["image", "name / prompt", "alignment pct", "aesthetic pct"],
                             _image_rows(fl.head(gallery_size), thumbs, ["alignment_percentile", "aesthetic_percentile"], []),
                             "flagged-table") + "</section>")
    gal = ['<section id="galleries"><h2>Galleries sorted by score</h2>']
    for c in scores.columns:
        v = scores.values[c]
        ok = np.flatnonzero(np.isfinite(v))
        order = ok[np.argsort(-v[ok] if scores.higher_is_better.get(c, True) else v[ok], kind="stable")]
        k = min(gallery_size, order.size)
        slug = "".join(ch if ch.isalnum() else "-" for ch in c)
        gal.append(f'<h3 id="gallery-{_e(slug)}">{_e(c)}: best {k}</h3><div class="gallery">')
        for i in order[:k]:
            gal.append(f'<div class="card">{thumbs(scores.images[i])}<div class="cap">{_fmt(v[i])} · {_e(Path(scores.images[i]).name)}</div></div>')
        gal.append("</div>")
        if order.size > k:
            gal.append(f'<h3>{_e(c)}: worst {k}</h3><div class="gallery">')
            for i in order[::-1][:k]:
                gal.append(f'<div class="card">{thumbs(scores.images[i])}<div class="cap">{_fmt(v[i])} · {_e(Path(scores.images[i]).name)}</div></div>')
            gal.append("</div>")
    gal.append("</section>")
    body.append("".join(gal))
    body.append("</main>")
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
           f'content="width=device-width, initial-scale=1"><link rel="icon" href="data:,"><title>{_e(title)}</title><style>{CSS}</style></head>'
           f'<body>{"".join(body)}</body></html>')
    path.write_text(doc, encoding="utf-8")
    (tables / "report.json").write_text(json.dumps(summary, indent=2, default=_default) + "\n")
    written["json"] = tables / "report.json"
    return written


def _default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
