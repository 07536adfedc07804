"""A stand-in for the BEATs encoder until `modeling_unimoe/{configuration,modeling}_beats.py` land.

It has the interface the audio path is built against, not BEATs' layers:
`BeatsConfig` (model_type "beats", `hidden_size`) and `BeatsModel(config)` with
`forward(input_features (B, frames, 128), padding_mask (B, frames) bool or None)` returning
`last_hidden_state` (B, patches, hidden_size), 16×16 patches in time-major order.
`conftest.py` installs it only when the real files are missing.
"""

import sys
import types

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


@strict
class BeatsConfig(PreTrainedConfig):
    model_type = "beats"

    hidden_size: int = 768
    num_mel_bins: int = 128
    patch_size: int = 16
    initializer_range: float = 0.02


class BeatsModel(PreTrainedModel):
    config_class = BeatsConfig
    config: BeatsConfig
    main_input_name = "input_features"

    def __init__(self, config: BeatsConfig):
        super().__init__(config)
        self.patch_embedding = nn.Conv2d(1, config.hidden_size, config.patch_size, stride=config.patch_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()

    def forward(self, input_features: torch.Tensor, padding_mask: torch.Tensor | None = None, **kwargs):
        patches = self.patch_embedding(input_features.unsqueeze(1))  # (B, D, T/16, F/16)
        hidden = self.proj(self.layer_norm(patches.flatten(2).transpose(1, 2)))  # time-major
        if padding_mask is not None:
            size = self.config.patch_size
            frames = padding_mask[:, : patches.shape[2] * size].unflatten(1, (patches.shape[2], size)).all(-1)
            hidden = hidden.masked_fill(frames.repeat_interleave(patches.shape[3], dim=1)[..., None], 0.0)
        return BaseModelOutput(last_hidden_state=hidden)


def install() -> None:
    """Registers the stand-in as `modeling_unimoe.configuration_beats` / `.modeling_beats`."""
    for name, attrs in (
        ("configuration_beats", {"BeatsConfig": BeatsConfig}),
        ("modeling_beats", {"BeatsModel": BeatsModel}),
    ):
        module = types.ModuleType(f"modeling_unimoe.{name}")
        module.__dict__.update(attrs)
        sys.modules[module.__name__] = module
