"""Published figures, recorded here (never fetched at run time), with their source and how sure we are.

Values are on the scale prefscore reports: accuracies as fractions in [0, 1] (the HPSv2 README prints
percent), correlations in [-1, 1]. Every figure carries ``tag``:

* ``"code"`` - read in the project's code or result files (e.g. pyiqa's benchmark CSVs);
* ``"readme"`` - printed in the project's README;
* ``"paper, unverified"`` - from a paper or a secondary page and not re-read: treat with care.

``condition`` says what must hold for the figure to apply (a model option, a protocol detail that
differs from ours). Source of all entries: /work/shared/REFERENCE-METRICS.md sections 4-7, which names
the files and lines read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One published number: ``value`` of ``statistic`` for ``metric`` (registry name) on ``dataset``."""

    dataset: str
    metric: str
    statistic: str
    value: float
    source: str
    tag: str
    condition: str = ""

    @property
    def verified(self) -> bool:
        return "unverified" not in self.tag


_HPS = "tgxs002/HPSv2@866735e README l.180-188 (HPD v2: evaluation.py evaluate_rank; ImageReward: evaluate_IR)"
_PYIQA = "chaofengc/IQA-PyTorch@01ae427 tests/{NR,IAA}_benchmark_results.csv (no logistic mapping)"
_PICK = "Pick-a-Pic paper abstract (via a secondary page) / Table from memory"
_IMSCORE = "RE-N-Y/imscore README benchmark table (protocol in its bench.md, not read)"


def _hps(metric: str, ir: float, hpd: float) -> list[Figure]:
    return [Figure("imagereward", metric, "accuracy", ir, _HPS, "readme"),
            Figure("hpdv2", metric, "inversion", hpd, _HPS, "readme")]


def _pyiqa(dataset: str, metric: str, plcc: float, srcc: float, krcc: float, condition: str = "") -> list[Figure]:
    return [Figure(dataset, metric, s, v, _PYIQA, "code", condition) for s, v in (("plcc", plcc), ("srcc", srcc), ("krcc", krcc))]


FIGURES: list[Figure] = [
    # HPSv2 README table (ImageReward test, HPD v2 test); the "new" test set is not distributed as a file set here.
    *_hps("laion-aesthetic", 0.574, 0.768),
    *_hps("imagereward", 0.651, 0.740),
    *_hps("pickscore", 0.629, 0.798),
    *_hps("hpsv2", 0.657, 0.833),
    *_hps("hpsv2.1", 0.668, 0.841),
    # Pick-a-Pic v1 test_unique, accuracy with ties (threshold from validation_unique)
    Figure("pickapic-v1-unique", "pickscore", "accuracy_ties", 0.702, _PICK, "paper, unverified"),
    Figure("pickapic-v1-unique", "laion-aesthetic", "accuracy_ties", 0.568, _PICK, "paper, unverified"),
    Figure("pickapic-v1-unique", "imagereward", "accuracy_ties", 0.611, _PICK, "paper, unverified"),
    # imscore's independent benchmark on Pick-a-Pic v2 test (pairwise accuracy; its exact protocol not read)
    *[Figure("pickapic-v2", m, "accuracy", v, _IMSCORE, "readme, protocol unverified",
             "imscore's protocol (split, tie handling) was not read; assumed tie-free accuracy on the test split")
      for m, v in (("pickscore", 0.802), ("hpsv2.1", 0.693), ("imagereward", 0.608), ("laion-aesthetic", 0.552),
                   ("clipscore", 0.606))],
    # pyiqa benchmark CSVs (PLCC/SRCC/KRCC without logistic mapping)
    *_pyiqa("koniq10k", "clip-iqa", 0.721, 0.657, 0.474,
            "pyiqa 'clipiqa' = RN50 backbone: run clip-iqa with --option clip-iqa.backbone=rn50"),
    *_pyiqa("ava", "clip-iqa", 0.358, 0.338, 0.230,
            "pyiqa 'clipiqa' = RN50 backbone: run clip-iqa with --option clip-iqa.backbone=rn50"),
    *_pyiqa("ava", "laion-aesthetic", 0.666, 0.665, 0.479,
            "pyiqa resizes with torchvision tensor ops (antialiased bicubic), prefscore with PIL as the official script"),
    *_pyiqa("ava", "q-align", 0.819, 0.822, 0.631, "OneAlign (q-future/one-align), aesthetic task"),
    *_pyiqa("spaq", "q-align", 0.936, 0.932, 0.766, "pyiqa 'qalign_8bit' (8-bit quantised OneAlign), quality task"),
]


def lookup(dataset: str, metric: str, statistic: str) -> Figure | None:
    """The published figure for (data set, metric registry name, statistic), or None."""
    for f in FIGURES:
        if f.dataset == dataset and f.metric == metric and f.statistic == statistic:
            return f
    return None


def for_dataset(dataset: str) -> list[Figure]:
    return [f for f in FIGURES if f.dataset == dataset]
