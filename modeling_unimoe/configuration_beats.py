"""Configuration of the BEATs general-audio encoder (Chen et al., 2022, arXiv 2212.09058).

Field names are those of the `cfg` dict stored in Microsoft's BEATs checkpoints, so an official
`cfg` maps onto this config key for key. Defaults are the released `BEATs_iter3_plus_AS2M.pt`
(the pre-trained, not fine-tuned, iter3+ model trained on AudioSet-2M) that Uni-MoE's audio
checkpoints use.

This file travels with every saved checkpoint (remote code): it imports only installed
libraries and its own siblings.
"""

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Activations of the official `get_activation_fn` that BeatsModel implements ("glu" swaps fc1 for
# a gated linear unit with other parameter names and is not supported).
BEATS_ACTIVATIONS = ("gelu", "gelu_accurate", "relu", "tanh", "linear")

# Defaults of the official `BEATsConfig` class. They apply to any key that an official `cfg`
# dict leaves out, which is not the same as this config's defaults (the values stored in the
# iter3+ AS2M checkpoint): the official class defaults to no deep norm, no relative positions and
# `input_patch_size=-1`.
OFFICIAL_CLASS_DEFAULTS: dict[str, Any] = {
    "input_patch_size": -1,
    "embed_dim": 512,
    "conv_bias": False,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_wise_gradient_decay_ratio": 1.0,
    "layer_norm_first": False,
    "deep_norm": False,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": False,
    "num_buckets": 320,
    "max_distance": 1280,
    "gru_rel_pos": False,
    "finetuned_model": False,
    "predictor_dropout": 0.1,
    "predictor_class": 527,
}


@strict
class BeatsConfig(PreTrainedConfig):
    r"""The BEATs audio encoder: 16x16 patches of a 128-bin log-mel fbank, a convolutional positional
    embedding and a post-LN (deep-norm) Transformer with gated relative position bias.

    Args (names of the official checkpoint `cfg`):
        input_patch_size (`int`, defaults to 16): side of the square fbank patches (frames x mel bins).
        embed_dim (`int`, defaults to 512): channels of the patch embedding.
        conv_bias (`bool`, defaults to `False`): whether the patch embedding has a bias.
        encoder_layers (`int`, defaults to 12): Transformer layers.
        encoder_embed_dim (`int`, defaults to 768): Transformer width (output size).
        encoder_ffn_embed_dim (`int`, defaults to 3072): feed-forward width.
        encoder_attention_heads (`int`, defaults to 12): attention heads.
        activation_fn (`str`, defaults to `"gelu"`): feed-forward activation, one of `BEATS_ACTIVATIONS`.
        layer_wise_gradient_decay_ratio (`float`, defaults to 0.6): gradient multiplier applied to the
            residual stream before each layer (forward is unchanged).
        layer_norm_first (`bool`, defaults to `False`): pre-LN layers plus a final LayerNorm instead of
            post-LN layers with a LayerNorm before the first layer.
        deep_norm (`bool`, defaults to `True`): scale the residual by `(2 * encoder_layers) ** 0.25`
            (DeepNet) in the post-LN layers.
        dropout, attention_dropout, activation_dropout, dropout_input (`float`, default 0.0): dropouts of
            the residual branches, attention probabilities, FFN hidden layer and projected patches.
        encoder_layerdrop (`float`, defaults to 0.05): probability of skipping a layer in training.
        conv_pos (`int`, defaults to 128): kernel size of the convolutional positional embedding.
        conv_pos_groups (`int`, defaults to 16): groups of that convolution.
        relative_position_embedding (`bool`, defaults to `True`): add a bucketed relative position bias
            to the attention scores (one table, shared by all layers).
        num_buckets (`int`, defaults to 320): relative position buckets (both directions).
        max_distance (`int`, defaults to 800): distance from which every relative position falls into
            the last bucket.
        gru_rel_pos (`bool`, defaults to `True`): gate the relative position bias per query and head.
        finetuned_model, predictor_dropout, predictor_class: describe the AudioSet classifier head of the
            fine-tuned checkpoints; [`BeatsModel`] is the encoder only and ignores them.

    Values are those stored in `BEATs_iter3_plus_AS2M.pt`. Build from an official `cfg` dict with
    [`BeatsConfig.from_official_cfg`], which fills keys missing from the dict with the official class
    defaults, as the official loader does.
    """

    model_type = "beats"
    attribute_map = {
        "hidden_size": "encoder_embed_dim",
        "num_hidden_layers": "encoder_layers",
        "num_attention_heads": "encoder_attention_heads",
        "intermediate_size": "encoder_ffn_embed_dim",
    }

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"

    layer_wise_gradient_decay_ratio: float | int = 0.6
    layer_norm_first: bool = False
    deep_norm: bool = True

    dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    activation_dropout: float | int = 0.0
    encoder_layerdrop: float | int = 0.05
    dropout_input: float | int = 0.0

    conv_pos: int = 128
    conv_pos_groups: int = 16

    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True

    finetuned_model: bool = False
    predictor_dropout: float | int = 0.1
    predictor_class: int = 527

    @classmethod
    def from_official_cfg(cls, cfg: dict[str, Any]) -> "BeatsConfig":
        """Build from the `cfg` dict of an official BEATs checkpoint (`torch.load(path)["cfg"]`).

        Keys the dict leaves out take the official `BEATsConfig` class defaults. Keys that the
        official class does not know are kept on the config (they round-trip through
        `save_pretrained`) but nothing reads them; a warning names them.
        """
        if not isinstance(cfg, dict):
            raise TypeError(f"An official BEATs cfg is a dict, got {type(cfg).__name__}.")
        unknown = sorted(set(cfg) - set(OFFICIAL_CLASS_DEFAULTS))
        if unknown:
            logger.warning(f"BEATs cfg keys {unknown} are not official BEATs options; BeatsModel ignores them.")
        return cls(**{**OFFICIAL_CLASS_DEFAULTS, **cfg})

    def to_official_cfg(self) -> dict[str, Any]:
        """The official `cfg` dict describing this architecture (inverse of `from_official_cfg`)."""
        return {key: getattr(self, key) for key in OFFICIAL_CLASS_DEFAULTS}

    def validate_architecture(self):
        """Part of `@strict` validation: runs when the config is built."""
        if self.input_patch_size < 1:
            raise ValueError(f"input_patch_size must be >= 1, got {self.input_patch_size}.")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(
                f"encoder_embed_dim ({self.encoder_embed_dim}) must be divisible by "
                f"encoder_attention_heads ({self.encoder_attention_heads})."
            )
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(
                f"encoder_embed_dim ({self.encoder_embed_dim}) must be divisible by conv_pos_groups ({self.conv_pos_groups})."
            )
        if self.deep_norm and self.layer_norm_first:
            raise ValueError("deep_norm=True needs post-LN layers (layer_norm_first=False), as in the official model.")
        if self.activation_fn not in BEATS_ACTIVATIONS:
            raise ValueError(f"activation_fn must be one of {BEATS_ACTIVATIONS}, got {self.activation_fn!r}.")
        # The bucketing keeps `num_buckets // 4` exact distances per direction and spreads the rest
        # logarithmically up to `max_distance`.
        if self.relative_position_embedding and not (
            self.num_buckets >= 4 and self.max_distance > self.num_buckets // 4
        ):
            raise ValueError(
                f"Relative positions need num_buckets >= 4 and max_distance > num_buckets // 4, "
                f"got num_buckets={self.num_buckets}, max_distance={self.max_distance}."
            )


__all__ = ["BEATS_ACTIVATIONS", "OFFICIAL_CLASS_DEFAULTS", "BeatsConfig"]
