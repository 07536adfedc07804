"""Load Microsoft's official BEATs checkpoints (`BEATs_iter3_plus_AS2M.pt`) into [`BeatsModel`].

An official file is a torch pickle of `{"cfg": dict, "model": state_dict}`. Its parameter names
are BeatsModel's, except that the relative position table, one tensor shared by every layer, is
stored once per layer; BeatsModel keeps it in layer 0 only.

    config, state_dict = load_official_beats_checkpoint("BEATs_iter3_plus_AS2M.pt")
    model = BeatsModel(config)
    model.load_state_dict(state_dict, strict=True)
"""

import os

import torch

from modeling_unimoe.configuration_beats import BeatsConfig

CLASSIFIER_KEYS = ("predictor.weight", "predictor.bias")


def _shared_bias_key(layer: int) -> str:
    return f"encoder.layers.{layer}.self_attn.relative_attention_bias.weight"


def convert_official_beats_state_dict(
    state_dict: dict[str, torch.Tensor], config: BeatsConfig, *, drop_classifier: bool = False
) -> dict[str, torch.Tensor]:
    """Official BEATs state dict -> BeatsModel state dict.

    Drops the per-layer copies of the shared relative position table after checking that they
    equal layer 0's. The AudioSet classifier of fine-tuned checkpoints (`predictor.*`) is not part
    of the encoder: it raises unless `drop_classifier=True`.
    """
    converted = dict(state_dict)
    if config.relative_position_embedding:
        source = converted.get(_shared_bias_key(0))
        for layer in range(1, config.encoder_layers):
            copy = converted.pop(_shared_bias_key(layer), None)
            if copy is not None and (source is None or not torch.equal(copy, source)):
                raise ValueError(
                    f"{_shared_bias_key(layer)} differs from {_shared_bias_key(0)}: BEATs shares one relative "
                    "position table across layers, so this checkpoint does not match the BEATs architecture."
                )
    classifier = [key for key in CLASSIFIER_KEYS if key in converted]
    if classifier and not drop_classifier:
        raise ValueError(
            f"The checkpoint has an AudioSet classifier head ({classifier}), which BeatsModel (the encoder) does "
            "not have; pass drop_classifier=True to load the encoder only."
        )
    for key in classifier:
        del converted[key]
    return converted


def load_official_beats_checkpoint(
    path: str | os.PathLike, *, drop_classifier: bool = False
) -> tuple[BeatsConfig, dict[str, torch.Tensor]]:
    """Read an official BEATs `.pt` file safely (`weights_only=True`) into a config and a BeatsModel state dict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not {"cfg", "model"} <= checkpoint.keys():
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not an official BEATs checkpoint: expected a dict with 'cfg' and 'model', got {found}."
        )
    config = BeatsConfig.from_official_cfg(checkpoint["cfg"])
    return config, convert_official_beats_state_dict(checkpoint["model"], config, drop_classifier=drop_classifier)


__all__ = ["convert_official_beats_state_dict", "load_official_beats_checkpoint"]
