"""What each training stage trains, as data.

A stage names the parameters it trains fully (regular expressions, full match on the names of
`UniMoeForConditionalGeneration.named_parameters()`) and, for stage 3, the modules that get a
LoRA adapter. Everything else is frozen. The encoder towers (CLIP, Whisper encoder, BEATs) are
frozen in every stage, as in every official stage.

    stage    full training                                   LoRA (r 8, α 16, dropout 0.05)
    stage1   connectors: mm_projector, speech_aligner         -
             (queries + Whisper decoder), speech_projector,
             audio_aligner (queries + Q-Former), audio_projector
    stage2   the dense LLM MLPs (they become the experts)     -
    stage3   routers (mlp.gate), mm/speech/audio_projector    q/k/v/o, every expert's gate/up/down,
                                                              dense MLPs of non-MoE layers

Stage 3 follows the released 4-expert speech recipe (official §1.5, §5.3): the aligners stay
frozen there, only their projectors train; routers train fully (no LoRA on them).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from torch import nn


@dataclass(frozen=True)
class Stage:
    """One training stage: `trainable` parameter-name patterns, optional `lora_targets` (a module-name pattern)."""

    name: str
    description: str
    trainable: tuple[str, ...]
    lora_targets: str | None = None


STAGES: dict[str, Stage] = {
    "stage1": Stage(
        name="stage1",
        description="cross-modal alignment: the connectors on modality→text pairs",
        trainable=(
            r"model\.mm_projector\..+",
            r"model\.speech_aligner\.query_tokens",
            # The Whisper decoder's token embedding is never used (the queries are its input).
            r"model\.speech_aligner\.decoder\.(?!embed_tokens\.).+",
            r"model\.speech_projector\..+",
            r"model\.audio_aligner\..+",
            r"model\.audio_projector\..+",
        ),
    ),
    "stage2": Stage(
        name="stage2",
        description="modality-specific experts: the dense LLM MLPs on one modality's instructions",
        trainable=(r"model\.layers\.\d+\.mlp\.(gate|up|down)_proj\.weight",),
    ),
    "stage3": Stage(
        name="stage3",
        description="MoE tuning on mixed instructions: LoRA on attention and experts, routers and projectors full",
        trainable=(
            r"model\.layers\.\d+\.mlp\.gate\.weight",
            r"model\.(mm|speech|audio)_projector\..+",
        ),
        lora_targets=r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(experts\.\d+\.)?(gate|up|down)_proj)",
    ),
}


def without_projectors(stage: Stage) -> Stage:
    """`stage` with the projectors left out of its fully trained parameters."""
    trainable = tuple(pattern for pattern in stage.trainable if "_projector" not in pattern)
    description = stage.description.replace("routers and projectors full", "routers full, projectors frozen")
    return replace(stage, description=description, trainable=trainable)


def get_stage(stage: str | Stage) -> Stage:
    """The stage of that name; a `Stage` (e.g. `without_projectors(...)`) is returned as it is."""
    if isinstance(stage, Stage):
        return stage
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; the stages are {sorted(STAGES)}.")
    return STAGES[stage]


def matching_parameters(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The names that fully match any of `patterns`, in their order."""
    compiled = [re.compile(pattern) for pattern in patterns]
    return [name for name in names if any(p.fullmatch(name) for p in compiled)]


def apply_stage(model: nn.Module, stage: str | Stage) -> list[str]:
    """Freezes `model` except the parameters `stage.trainable` names; returns their names.

    Raises:
        ValueError: the stage trains nothing in this model (e.g. stage 1 without any encoder).
    """
    stage = get_stage(stage)
    names = [name for name, _ in model.named_parameters()]
    trainable = set(matching_parameters(names, stage.trainable))
    if not trainable:
        raise ValueError(
            f"{stage.name} trains the parameters matching {stage.trainable}, and this model has none of them."
        )
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return [name for name in names if name in trainable]


def modules_to_save(model: nn.Module, stage: str | Stage) -> list[str]:
    """Full names of the modules owning the fully trained parameters of a LoRA stage (PEFT's `modules_to_save`)."""
    stage = get_stage(stage)
    names = matching_parameters((name for name, _ in model.named_parameters()), stage.trainable)
    return sorted({name.rsplit(".", 1)[0] for name in names})


def lora_config(model: nn.Module, stage: str | Stage = "stage3", r: int = 8, alpha: int = 16, dropout: float = 0.05):
    """`peft.LoraConfig` of a LoRA stage for `model`: LoRA on `stage.lora_targets`, the modules of
    `stage.trainable` fully trained and saved with the adapter. Defaults are the official ones."""
    from peft import LoraConfig

    stage = get_stage(stage)
    if stage.lora_targets is None:
        raise ValueError(f"{stage.name} trains no LoRA adapter.")
    targets = [name for name, _ in model.named_modules() if re.fullmatch(stage.lora_targets, name)]
    if not targets:
        raise ValueError(f"{stage.name}: no module of this model matches the LoRA targets {stage.lora_targets!r}.")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=stage.lora_targets,
        modules_to_save=modules_to_save(model, stage),
    )


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


__all__ = [
    "STAGES",
    "Stage",
    "apply_stage",
    "get_stage",
    "lora_config",
    "matching_parameters",
    "modules_to_save",
    "trainable_parameter_names",
    "without_projectors",
]
