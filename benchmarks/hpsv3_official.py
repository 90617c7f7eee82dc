"""The official HPSv3 side of ``bench_hpsv3.py``; runs in the official environment (``/work/venvs/hpsv3``,
made by ``tests/data/hpsv3/make_venv.sh``: hpsv3 1.0.0, transformers 4.45.2), never imported by prefscore.

usage: python hpsv3_official.py make <out_dir> '<json config overrides>'
           a random HPSv3 model of the given Qwen2-VL sizes in the published layout: HPSv3.safetensors (made by the
           package's own create_model_and_processor, every parameter redrawn as in tests/data/hpsv3/generate.py) +
           the fixture's Qwen2-format tokenizer, chat template and real Qwen2-VL-7B-Instruct preprocessor settings;
           the base model and the official yaml (float32) stay in <out_dir>/base for `serve`
       python hpsv3_official.py serve <out_dir>
           loads HPSv3RewardInferencer once, prints "ready", then for each JSON line
           {"images": [...], "prompt": str, "batch": int} on stdin scores the images with `reward(paths, prompts)`
           (the README call), `batch` images per call under torch.no_grad(), and prints
           {"seconds": wall time of all calls, "mu": [...]}.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "hpsv3"
SMALL = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
         "chat_template.json")


def make(out: Path, overrides: dict) -> None:
    sys.path.insert(0, str(FIXTURE))
    import generate  # the fixture generator: tiny_config, redraw
    import safetensors.torch
    import transformers
    from hpsv3.train import create_model_and_processor
    from hpsv3.utils.parser import DataConfig, ModelConfig, PEFTLoraConfig, TrainingConfig, parse_args_with_yaml
    from omegaconf import OmegaConf
    import hpsv3

    base = out / "base"
    base.mkdir(parents=True, exist_ok=True)
    for name in SMALL:
        shutil.copy(FIXTURE / "model" / name, base / name)
    n_tokens = len(json.loads((FIXTURE / "model" / "tokenizer.json").read_text())["model"]["vocab"]) + len(generate.SPECIALS)
    cfg = generate.tiny_config(n_tokens)
    vision = dict(cfg["vision_config"], **overrides.pop("vision_config", {}))
    cfg.update(overrides)
    cfg["vision_config"] = dict(vision, hidden_size=cfg["hidden_size"])
    torch.manual_seed(0)
    transformers.Qwen2VLForConditionalGeneration(transformers.Qwen2VLConfig(**cfg)).save_pretrained(str(base))
    (base / "config.json").write_text(json.dumps(cfg, indent=1))
    conf = OmegaConf.to_container(OmegaConf.load(Path(hpsv3.__file__).parent / "config" / "HPSv3_7B.yaml"))
    conf.update(model_name_or_path=str(base), bf16=False, torch_dtype="float32", output_dir=str(base / "out"),
                report_to="none")
    OmegaConf.save(OmegaConf.create(conf), base / "HPSv3_bench.yaml")
    (d, t, m, p), _ = parse_args_with_yaml((DataConfig, TrainingConfig, ModelConfig, PEFTLoraConfig),
                                           str(base / "HPSv3_bench.yaml"), is_train=False)
    model, _, _ = create_model_and_processor(m, p, t)
    generate.redraw(model, 1)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "HPSv3.safetensors"))
    for name in SMALL + ("config.json",):
        shutil.copy(base / name, out / name)
    print(json.dumps({"params": sum(v.numel() for v in model.state_dict().values()), "config": cfg}))


def serve(out: Path) -> None:
    from hpsv3.inference import HPSv3RewardInferencer

    inferencer = HPSv3RewardInferencer(config_path=str(out / "base" / "HPSv3_bench.yaml"),
                                       checkpoint_path=str(out / "HPSv3.safetensors"), device="cpu")
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        images, b = job["images"], job["batch"]
        mu = []
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(images), b):
                chunk = images[i:i + b]
                rewards = inferencer.reward(chunk, [job["prompt"]] * len(chunk))
                mu += [r[0].item() for r in rewards]
        print(json.dumps({"seconds": time.perf_counter() - start, "mu": mu}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    elif sys.argv[1] == "serve":
        serve(Path(sys.argv[2]))
    else:
        raise SystemExit(__doc__)
