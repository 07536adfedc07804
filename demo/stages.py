"""The three Uni-MoE stages of the demo, each one call of the real `unimoe_trl` stage scripts."""

from dataclasses import dataclass
from pathlib import Path

from unimoe_trl import stage1, stage2, stage3
from unimoe_trl.arguments import (
    ModelArguments,
    Stage2Arguments,
    Stage3Arguments,
    UniMoeScriptArguments,
    UniMoeTrainingArguments,
)
from unimoe_trl.run import StageResult


@dataclass(frozen=True)
class StageSettings:
    """Optimiser settings of one stage run (the rest are the scripts' defaults)."""

    steps: int
    learning_rate: float
    batch_size: int = 16


def _training_args(output_dir: Path, settings: StageSettings, seed: int, workers: int) -> UniMoeTrainingArguments:
    return UniMoeTrainingArguments(
        output_dir=str(output_dir),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        weight_decay=0.0,
        logging_steps=max(1, settings.steps // 5),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        disable_tqdm=False,
    )


def _script_args(dataset: Path) -> UniMoeScriptArguments:
    # The demo's data mixes speech (`<speech>`, Whisper) and general audio (`<audio>`, BEATs).
    return UniMoeScriptArguments(dataset_name=str(dataset), voice_modality="placeholder")


def run_stage1(
    model_dir: Path, dataset: Path, output_dir: Path, settings: StageSettings, seed: int = 0, workers: int = 1
) -> StageResult:
    """Stage 1: the connectors on caption pairs (towers and LM frozen)."""
    return stage1.main(
        _script_args(dataset),
        _training_args(output_dir, settings, seed, workers),
        ModelArguments(model_name_or_path=str(model_dir)),
    )


def run_stage2(
    model_dir: Path,
    dataset: Path,
    modality: str,
    output_dir: Path,
    settings: StageSettings,
    seed: int = 0,
    workers: int = 1,
) -> StageResult:
    """Stage 2: the dense MLPs on one modality's instructions; they become that modality's expert."""
    return stage2.main(
        _script_args(dataset),
        _training_args(output_dir, settings, seed, workers),
        ModelArguments(model_name_or_path=str(model_dir)),
        Stage2Arguments(modality=modality),
    )


def run_stage3(
    model_dir: Path,
    expert_dirs: list[Path],
    dataset: Path,
    output_dir: Path,
    settings: StageSettings,
    seed: int = 0,
    workers: int = 1,
    router_init: Path | None = None,
    train_projectors: bool = True,
) -> StageResult:
    """Stage 3: the MoE built from the stage-2 experts (expert k ← `expert_dirs[k]`), LoRA on
    attention and experts, routers (starting from `router_init` if given) and, if
    `train_projectors`, the projectors trained fully; writes `output_dir/merged`."""
    return stage3.main(
        _script_args(dataset),
        _training_args(output_dir, settings, seed, workers),
        ModelArguments(model_name_or_path=str(model_dir)),
        Stage3Arguments(
            expert_files=[str(path) for path in expert_dirs],
            router_init=None if router_init is None else str(router_init),
            train_projectors=train_projectors,
        ),
    )


__all__ = ["StageSettings", "run_stage1", "run_stage2", "run_stage3"]
