"""A stand-in for the BEATs encoder until `modeling_unimoe/{configuration,modeling}_beats.py` land.

It has the interface the audio path is built against, not BEATs' layers: `BeatsConfig`
(model_type "beats", the official `cfg` field names, `hidden_size` = `encoder_embed_dim`) and
`BeatsModel(config)` with `forward(input_features (B, frames, 128), padding_mask (B, frames) bool
or None)` returning `last_hidden_state` (B, patches, hidden_size), 16×16 patches in time-major
order. `conftest.py` installs it only when the real files are missing.
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
    attribute_map = {"hidden_size": "encoder_embed_dim", "num_hidden_layers": "encoder_layers"}

    input_patch_size: int = 16
    embed_dim: int = 512
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    encoder_layerdrop: float = 0.05
    conv_pos: int = 128
    conv_pos_groups: int = 16
    num_buckets: int = 320
    max_distance: int = 800


class BeatsModel(PreTrainedModel):
    config_class = BeatsConfig
    config: BeatsConfig
    main_input_name = "input_features"

    def __init__(self, config: BeatsConfig):
        super().__init__(config)
        size = config.input_patch_size
        self.patch_embedding = nn.Conv2d(1, config.embed_dim, size, stride=size)
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.encoder_embed_dim)
        self.post_init()

    def forward(self, input_features: torch.Tensor, padding_mask: torch.Tensor | None = None, **kwargs):
        patches = self.patch_embedding(input_features.unsqueeze(1))  # (B, D, T/16, F/16)
        hidden = self.proj(self.layer_norm(patches.flatten(2).transpose(1, 2)))  # time-major
        if padding_mask is not None:
            size = self.config.input_patch_size
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
