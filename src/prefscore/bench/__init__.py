"""Reproduce the published benchmark tables: data set adapters, each paper's protocol, published figures.

>>> from prefscore.bench import get_dataset, run_bench
>>> bench = get_dataset("hpdv2").load("/data/HPDv2")            # test.json + test/ images
>>> result = run_bench(bench, ["hpsv2"])                         # scores streamed, chunk by chunk
>>> result.frame()        # estimate, CI, published figure, "within CI" / "outside CI"

CLI: ``prefscore bench --dataset hpdv2:/data/HPDv2 --metrics hpsv2,pickscore`` (see docs/bench.md).
"""

from .adapters import DATASETS, BenchSet, DatasetSpec, Item, get_dataset, resolve_path
from .published import FIGURES, Figure, lookup
from .runner import BenchConfig, BenchResult, BenchRow, read_score_file, run_bench, score_items

__all__ = [
    "DATASETS", "FIGURES", "BenchConfig", "BenchResult", "BenchRow", "BenchSet", "DatasetSpec", "Figure", "Item",
    "get_dataset", "lookup", "read_score_file", "resolve_path", "run_bench", "score_items",
]
