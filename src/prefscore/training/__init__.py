"""Training preference and rating models from human judgements (``prefscore train``).

* Fast path: heads (linear or MLP) on frozen, cached backbone features - the weight-free image
  statistics (:mod:`.stats`) or any CLIP's image (and text) embeddings.
* Full path: fine-tuning a CLIP as PickScore / HPS v2 do (:mod:`.finetune`).

The result is a model directory that ``prefscore.load(<dir>)`` scores with (metric ``custom``).
"""

from .finetune import FinetuneConfig
from .heads import HeadConfig
from .trainer import TrainConfig, TrainResult, train

__all__ = ["FinetuneConfig", "HeadConfig", "TrainConfig", "TrainResult", "train"]
