"""Reproduce the published benchmark tables: data set adapters, each paper's protocol, published figures.

>>> from prefscore.bench import get_dataset, run_bench
>>> bench = get_dataset("hpdv2").load("/data/HPDv2")            # test.json + test/ images
>>> result = run_bench(bench, ["hpsv2"])                         # scores streamed, chunk by chunk
>>> result.frame()        # estimate, CI, published figure, "within CI" / "outside CI"

CLI: ``prefscore bench --dataset hpdv2:/data/HPDv2 --metrics hpsv2,pickscore`` (see docs/bench.md).
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "DATASETS": "adapters",
    "BenchSet": "adapters",
    "DatasetSpec": "adapters",
    "Item": "adapters",
    "get_dataset": "adapters",
    "resolve_path": "adapters",
    "FIGURES": "published",
    "Figure": "published",
    "lookup": "published",
    "BenchConfig": "runner",
    "BenchResult": "runner",
    "BenchRow": "runner",
    "read_score_file": "runner",
    "run_bench": "runner",
    "score_items": "runner",
})

__all__ = [
    "DATASETS", "FIGURES", "BenchConfig", "BenchResult", "BenchRow", "BenchSet", "DatasetSpec", "Figure", "Item",
    "get_dataset", "lookup", "read_score_file", "resolve_path", "run_bench", "score_items",
]
