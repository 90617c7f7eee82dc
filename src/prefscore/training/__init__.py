"""Training preference and rating models from human judgements (``prefscore train``).

* Fast path: heads (linear or MLP) on frozen, cached backbone features - the weight-free image
  statistics (:mod:`.stats`) or any CLIP's image (and text) embeddings.
* Full path: fine-tuning a CLIP as PickScore / HPS v2 do (:mod:`.finetune`).

The result is a model directory that ``prefscore.load(<dir>)`` scores with (metric ``custom``).
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "FinetuneConfig": "finetune",
    "HeadConfig": "heads",
    "TrainConfig": "trainer",
    "TrainResult": "trainer",
    "train": "trainer",
})

__all__ = ["FinetuneConfig", "HeadConfig", "TrainConfig", "TrainResult", "train"]
