"""Collect human pairwise judgements in the browser, with a live leaderboard.

>>> from prefscore.annotate import Store, load_candidates, create_app, export_pairs
>>> store = Store("annotations.sqlite")
>>> store.register(*load_candidates("candidates.csv"))
>>> token = store.add_annotator("alice")
>>> app = create_app(store)            # serve with uvicorn; or `prefscore annotate serve`
>>> export_pairs(store, "pairs.csv")   # the file `prefscore train` / `evaluate` read

See docs/annotate.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .db import Store

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "Store": "db",
    "StoreError": "db",
    "ExportOptions": "export",
    "export_pairs": "export",
    "AnnotationInputError": "inputs",
    "Candidate": "inputs",
    "MetricColumn": "inputs",
    "load_candidates": "inputs",
    "leaderboard": "report",
    "SchedulerConfig": "scheduling",
})


def create_app(store: Store, allowed_hosts: list[str] | None = None, secure_cookie: bool = False, **options):
    """The FastAPI app (imported lazily: FastAPI is only needed to serve). See :func:`.app.create_app`
    (``public_leaderboard``, ``max_body``)."""
    from .app import create_app as _create

    return _create(store, allowed_hosts, secure_cookie, **options)


__all__ = ["AnnotationInputError", "Candidate", "ExportOptions", "MetricColumn", "SchedulerConfig", "Store", "StoreError",
           "create_app", "export_pairs", "leaderboard", "load_candidates"]
