"""Rewards for generators: differentiable rewards, reward-guided sampling and reward fine-tuning.

* :mod:`.rewards` - :class:`Reward` objects from prefscore metrics, weighted sums and composites;
* :mod:`.sampling` - :func:`best_of_n` and :func:`rejection_sample` around any diffusers pipeline;
* :mod:`.finetune` - :class:`RewardFinetuner`: ReFL (:mod:`.refl`) or DRaFT-K (:mod:`.draft`) on
  LoRA adapters (:mod:`.lora`) of the UNet, with held-out tracking, checkpoints and resume;
* :mod:`.tiny` - a tiny random Stable Diffusion pipeline for tests and offline trials.

Needs ``diffusers`` and ``peft`` (imported when used). See docs/generation.md.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "FinetuneConfig": "finetune",
    "FinetuneResult": "finetune",
    "PretrainData": "finetune",
    "RewardFinetuner": "finetune",
    "RewardHackingWarning": "finetune",
    "LoraSettings": "lora",
    "CompositeReward": "rewards",
    "FunctionReward": "rewards",
    "MetricReward": "rewards",
    "Reward": "rewards",
    "WeightedReward": "rewards",
    "as_reward": "rewards",
    "load_reward": "rewards",
    "Candidate": "sampling",
    "PromptResult": "sampling",
    "Scorer": "sampling",
    "best_of_n": "sampling",
    "rejection_sample": "sampling",
    "write_results": "sampling",
})

__all__ = [
    "Candidate", "CompositeReward", "FinetuneConfig", "FinetuneResult", "FunctionReward", "LoraSettings",
    "MetricReward", "PretrainData", "PromptResult", "Reward", "RewardFinetuner", "RewardHackingWarning", "Scorer",
    "WeightedReward", "as_reward", "best_of_n", "load_reward", "rejection_sample", "write_results",
]
