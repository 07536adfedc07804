"""A warm start for the stage-3 routers: each expert's router row points at its modality.

Expert k of the demo's MoE is the stage-2 MLP of modality k. The official code draws the new
routers at random and lets a long stage 3 sort tokens out; in the demo's few hundred CPU steps
random routers mostly stay random, and tokens of every modality land on whichever two experts
the draw favoured. So the demo starts each router row at its modality's direction instead: the
mean input of that MoE layer over the modality's media tokens, minus the mean over all
modalities, in the stage-1 model that stage 3 starts from. The rows are then trained as usual.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from modeling_unimoe import UniMoeForConditionalGeneration, UniMoeProcessor
from unimoe_trl.collator import UniMoeDataCollator

# Logit margin of a modality's centroid over the mean, for its own expert.
CENTROID_MARGIN = 2.0


def media_token_centroids(
    model: UniMoeForConditionalGeneration,
    batch: Mapping[str, torch.Tensor],
    layers: Sequence[int],
) -> dict[int, torch.Tensor]:
    """layer -> mean MLP input (hidden,) over the media tokens of `batch`."""
    config = model.config
    media_ids = torch.tensor([config.image_token_id, config.video_token_id, config.speech_token_id, config.audio_token_id])
    media = torch.isin(batch["input_ids"], media_ids).reshape(-1)
    inputs: dict[int, torch.Tensor] = {}
    handles = [
        model.model.layers[layer].mlp.register_forward_pre_hook(
            lambda module, args, layer=layer: inputs.__setitem__(layer, args[0].reshape(-1, args[0].shape[-1]))
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k not in ("labels", "skipped")})
    finally:
        for handle in handles:
            handle.remove()
    return {layer: inputs[layer][media].float().mean(dim=0) for layer in layers}


def modality_routers(
    model_dir: str | Path,
    records: Mapping[str, Sequence[dict]],
    media_dir: str | Path,
    layers: Sequence[int],
) -> dict[str, torch.Tensor]:
    """Router weights (`model.layers.{L}.mlp.gate.weight`, (num_experts, hidden)) whose row k is
    the unit direction from the mean of all modalities to modality k's media centroid (expert k
    ← the k-th key of `records`), scaled so that the centroid's own logit leads by
    `CENTROID_MARGIN`."""
    model = UniMoeForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = UniMoeProcessor.from_pretrained(model_dir)
    collator = UniMoeDataCollator(processor, model.config.text_config.max_position_embeddings, "placeholder", media_dir)
    centroids = [media_token_centroids(model, collator(list(rows)), layers) for rows in records.values()]
    return {
        f"model.layers.{layer}.mlp.gate.weight": centroid_router(torch.stack([c[layer] for c in centroids]))
        for layer in layers
    }


def centroid_router(centroids: torch.Tensor, margin: float = CENTROID_MARGIN) -> torch.Tensor:
    """(experts, hidden) router rows: row k is the direction from the centroids' mean to
    centroid k, made orthogonal to the mean (routers have no bias, so no expert may gain from the
    offset every hidden state shares), scaled so that `row_k · (centroid_k - mean) = margin`."""
    mean = centroids.mean(dim=0)
    offsets = centroids - mean
    unit_mean = mean / mean.norm().clamp_min(1e-6)
    offsets = offsets - (offsets @ unit_mean)[:, None] * unit_mean
    lengths = offsets.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return margin * offsets / lengths**2


def write_modality_routers(
    model_dir: str | Path,
    records: Mapping[str, Sequence[dict]],
    media_dir: str | Path,
    layers: Sequence[int],
    path: str | Path,
) -> Path:
    """`modality_routers` saved as safetensors, for stage 3's `router_init`."""
    path = Path(path)
    save_file({k: v.contiguous() for k, v in modality_routers(model_dir, records, media_dir, layers).items()}, path)
    return path


__all__ = ["centroid_router", "media_token_centroids", "modality_routers", "write_modality_routers"]
