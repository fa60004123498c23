"""The benchmarks' baselines run transformers' own T5 on our model directory (our models are saved in its format)."""

from pathlib import Path

import torch
from transformers import T5ForConditionalGeneration
from transformers.activations import ACT2FN


def transformers_t5(directory: Path) -> T5ForConditionalGeneration:
    """transformers' T5ForConditionalGeneration of a model directory, fp32, with the fused tanh GELU our T5
    runs (transformers' "gelu_new" writes the same function out in Python ops), so that a baseline does
    not lose time we would not."""
    model = T5ForConditionalGeneration.from_pretrained(directory, dtype=torch.float32, local_files_only=True).eval()
    for module in model.modules():
        if type(getattr(module, "act", None)).__name__ == "NewGELUActivation":
            module.act = ACT2FN["gelu_pytorch_tanh"]
    return model
