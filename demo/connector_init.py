"""A warm start for the stage-1 connectors: each projector's last linear layer starts at the
least-squares map from its inputs to the embeddings of the slot words.

Stage 1 trains the connectors to turn media into the slot words the language model read in its
text pre-training (`synthetic_task.transcribe`). The pre-trained aligners hold what those words
say, but in low-variance directions of their outputs: for the audio Q-Former the least-squares
map that reads them has 2.6 times the weight norm the projector reached in the demo's 400
stage-1 steps (7.0 against 2.7), and short of it the loudness slot came out as its neighbour
(`docs/quickstart.md`). So the demo solves the last linear layer of every projector in closed
form on the stage-1 'slots' captions (ridge regression, inputs as stage 1 sees them), then runs
stage 1 as usual.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from modeling_unimoe import UniMoeForConditionalGeneration, UniMoeProcessor
from unimoe_trl.collator import UniMoeDataCollator

from .pretrain import SlotEmbedding, single_token
from .synthetic_task import slot_components

RIDGE = 1e-3  # relative to the inputs' mean square: keeps weights finite for unused directions


def last_linear(model: UniMoeForConditionalGeneration, modality: str) -> nn.Linear:
    inner = model.model
    if modality in ("image", "video"):
        return inner.mm_projector[-1]
    return inner.speech_projector if modality == "speech" else inner.audio_projector


def ridge_solution(
    inputs: torch.Tensor, targets: torch.Tensor, ridge: float = RIDGE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (out, in), bias (out,)) minimising |inputs @ weight.T + bias - targets|² +
    ridge * mean(inputs²) * |weight|² (the bias is not penalised)."""
    x_mean, t_mean = inputs.mean(dim=0), targets.mean(dim=0)
    x, t = inputs - x_mean, targets - t_mean
    penalty = ridge * x.pow(2).mean() * len(x)
    gram = x.T @ x + penalty * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, x.T @ t).T
    return weight, t_mean - weight @ x_mean


def _connector_inputs_and_targets(
    model: UniMoeForConditionalGeneration,
    collator: UniMoeDataCollator,
    embed: SlotEmbedding,
    records: Sequence[dict],
    modality: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every media token's input to the last projector layer, and its slot word's embedding."""
    layer = last_linear(model, modality)
    captured = []
    handle = layer.register_forward_pre_hook(
        lambda module, args: captured.append(args[0].reshape(-1, args[0].shape[-1]))
    )
    try:
        with torch.no_grad():
            batch = collator(list(records))
            model(**{k: v for k, v in batch.items() if k not in ("labels", "skipped")})
    finally:
        handle.remove()
    inputs = torch.cat(captured)
    words = [word for record in records for word in record["conversations"][1]["value"].split()]
    if len(words) != len(inputs):
        raise ValueError(f"{modality}: {len(inputs)} media tokens but {len(words)} slot words")
    ids = torch.tensor([single_token(collator.processor.tokenizer, word) for word in words])
    with torch.no_grad():
        return inputs.float(), embed(ids).float()


def warm_start_connectors(
    model: UniMoeForConditionalGeneration,
    processor: UniMoeProcessor,
    records: Mapping[str, Sequence[dict]],
    media_dir: str | Path,
) -> dict[str, float]:
    """Sets the last linear layer of each modality's projector, in place, to the ridge solution on
    `records[modality]` (stage-1 'slots' records: one slot word per media token). Image and video
    share the vision projector and are solved together. Returns R² per projector."""
    collator = UniMoeDataCollator(processor, model.config.text_config.max_position_embeddings, "placeholder", media_dir)
    embed = SlotEmbedding(model.get_input_embeddings(), processor.tokenizer, slot_components())
    model.eval()
    groups: dict[int, list[str]] = {}
    for modality in records:
        groups.setdefault(id(last_linear(model, modality)), []).append(modality)
    r2 = {}
    for modalities in groups.values():
        pairs = [_connector_inputs_and_targets(model, collator, embed, records[m], m) for m in modalities]
        inputs, targets = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        weight, bias = ridge_solution(inputs, targets)
        layer = last_linear(model, modalities[0])
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        residual = targets - inputs @ weight.T - bias
        r2["+".join(modalities)] = 1 - residual.pow(2).sum().item() / (targets - targets.mean(0)).pow(2).sum().item()
    return r2


__all__ = ["last_linear", "ridge_solution", "warm_start_connectors"]
