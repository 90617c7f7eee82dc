"""t2v-metrics 3.0's Qwen2-VL VQAScore timed on a random model folder; run in /work/venvs/vqascore-qwen.

    python vqascore_qwen_official_worker.py FAMILY MODEL_DIR ROUNDS IMAGE... -- PROMPT...

Loads the scorer as tests/data/vqascore-qwen/generate.py does (float32, SDPA, the model folder), scores every
(image, prompt) pair per round through ``Score.forward`` (one image at a time, its prompts in one call), and prints
one JSON line: the seconds of each round and the scores of the last.
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data" / "vqascore-qwen"))
import generate as g  # noqa: E402

family, model_dir, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
split = sys.argv.index("--")
images, prompts = sys.argv[4:split], sys.argv[split + 1:]
root, qwen2vl_model, Score = g.import_official()
spec = g.FAMILIES[family]
table = qwen2vl_model.QWEN2_VL_MODELS[spec["model_name"]]
table["tokenizer"]["path"] = table["model"]["path"] = model_dir
table["model"]["torch_dtype"], table["model"]["attn_implementation"] = torch.float32, "sdpa"


class VQAScore(Score):
    def prepare_scoremodel(self, model, device="cuda", cache_dir=None, **kwargs):
        return qwen2vl_model.Qwen2VLModel(model, device=device, cache_dir=cache_dir, **kwargs)

    def list_all_models(self):
        return list(qwen2vl_model.QWEN2_VL_MODELS)


scorer = VQAScore(model=spec["model_name"], device="cpu")
scorer(images=images[:1], texts=prompts[:1])  # warm-up
times = []
for _ in range(rounds):
    t = time.perf_counter()
    scores = [scorer(images=[im], texts=prompts)[0].tolist() for im in images]
    times.append(time.perf_counter() - t)
print(json.dumps({"seconds": times, "scores": scores}))
