"""Loading LoRA adapters of per-expert UniMoe models with PEFT 0.21 under transformers 5.

`modeling_unimoe` registers checkpoint conversions for the `"unimoe"` model type that merge
per-expert keys into the fused layout's 3D tensors. The transformers loader applies them only
where the model has fused targets, but PEFT applies them to every adapter state dict of that
model type: on a per-expert model (the default layout) the expert LoRA weights are renamed to
fused keys the model does not have, and are silently dropped ("Found missing adapter keys").
Stage 3 trains exactly those weights, so every adapter load (resume, best model, merge) goes
through `adapter_keys_as_saved`.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    return config.get_text_config() if config is not None else None


@contextmanager
def adapter_keys_as_saved(model: nn.Module) -> Iterator[None]:
    """While active, PEFT loads the adapter keys of a per-expert `model` as they were saved."""
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    text_config = _text_config(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    registered = get_checkpoint_conversion_mapping(model_type) if model_type else None
    if registered is None or getattr(text_config, "experts_layout", "per_expert") != "per_expert":
        yield
        return
    register_checkpoint_conversion_mapping(model_type, [], overwrite=True)
    try:
        yield
    finally:
        register_checkpoint_conversion_mapping(model_type, registered, overwrite=True)


__all__ = ["adapter_keys_as_saved"]
