"""What every stage script does: load, build the data, freeze per the stage table, train, save."""

from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed
from transformers.utils import logging

from modeling_unimoe import UniMoeForConditionalGeneration, UniMoeProcessor

from .arguments import ModelArguments, UniMoeScriptArguments
from .collator import SKIP_REASONS, UniMoeDataCollator
from .data import DataReport, build_dataset, tokens_per_item
from .stages import Stage, apply_stage, get_stage
from .trainer import UniMoeTrainer, UniMoeTrainingArguments

logger = logging.get_logger(__name__)


@dataclass
class StageResult:
    """What a stage's `main` returns: where things are and how training went."""

    output_dir: Path
    log_history: list[dict]
    data_report: DataReport
    skipped: dict[str, int]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        """The logged training losses, in order."""
        return [entry["loss"] for entry in self.log_history if "loss" in entry]


def setup(training_args: UniMoeTrainingArguments) -> None:
    """Logging level and seed before anything random (LoRA init, routers) happens."""
    logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)


def load_model(model_args: ModelArguments, path: str | Path | None = None) -> UniMoeForConditionalGeneration:
    path = path if path is not None else model_args.model_name_or_path
    if path is None:
        raise ValueError("--model_name_or_path is required.")
    return UniMoeForConditionalGeneration.from_pretrained(
        path, dtype=model_args.dtype, attn_implementation=model_args.attn_implementation
    )


def load_processor(model_args: ModelArguments) -> UniMoeProcessor:
    return UniMoeProcessor.from_pretrained(model_args.processor_name_or_path or model_args.model_name_or_path)


def max_length(training_args: UniMoeTrainingArguments, model: UniMoeForConditionalGeneration) -> int:
    limit = model.config.text_config.max_position_embeddings
    wanted = training_args.model_max_length
    if wanted is None:
        return limit
    if wanted > limit:
        raise ValueError(f"model_max_length={wanted} is longer than the model's max_position_embeddings={limit}.")
    return wanted


def _resume_value(value: str | None) -> str | bool | None:
    if isinstance(value, str) and value.lower() in ("true", "last"):
        return True  # the last checkpoint in output_dir
    return value


def _datasets(script_args: UniMoeScriptArguments, training_args: UniMoeTrainingArguments, processor):
    if not script_args.dataset_name:
        raise ValueError("--dataset_name is required (an official JSON file, a saved dataset or a Hub dataset).")
    if script_args.dataset_streaming:
        raise ValueError("dataset_streaming is not supported: the stages read sample lengths and modalities up front.")
    kwargs = dict(
        dataset_config=script_args.dataset_config,
        media_dir=script_args.media_dir,
        voice_modality=script_args.voice_modality,
        tokens_per_item=tokens_per_item(processor),
        num_proc=script_args.dataset_num_proc,
    )
    with training_args.main_process_first(desc="checking the dataset"):
        train, report = build_dataset(script_args.dataset_name, split=script_args.dataset_train_split, **kwargs)
        evaluation = None
        if training_args.eval_strategy != "no":
            name, split = _eval_source(script_args)
            evaluation, _ = build_dataset(name, split=split, **kwargs)
    return train, evaluation, report


def _eval_source(script_args: UniMoeScriptArguments) -> tuple[str, str]:
    """(dataset, split) to evaluate on: `--dataset_test_split` is a split name, or the evaluation
    file itself when `--dataset_name` is a JSON file (which has no splits)."""
    test = script_args.dataset_test_split
    if Path(test).is_file():
        return test, "train"
    if Path(script_args.dataset_name).is_file():
        raise ValueError(
            f"{script_args.dataset_name} is one file without splits: give the evaluation file as --dataset_test_split."
        )
    return script_args.dataset_name, test


def check_encoders(model: UniMoeForConditionalGeneration, report: DataReport) -> None:
    """Fails before training when the data has a modality the checkpoint has no encoder for."""
    sub_configs = {
        "image": "vision_config",
        "video": "vision_config",
        "speech": "speech_config",
        "audio": "audio_config",
    }
    present = {m for group in report.modalities for m in group.split("+")} - {"text"}
    missing = sorted(m for m in present if getattr(model.config, sub_configs[m]) is None)
    if missing:
        raise ValueError(
            f"The dataset has {', '.join(missing)} samples but the checkpoint has no encoder for them "
            f"({', '.join(sorted({sub_configs[m] for m in missing}))} is None); check --voice_modality."
        )


def run_stage(
    stage: str | Stage,
    model: UniMoeForConditionalGeneration,
    processor: UniMoeProcessor,
    script_args: UniMoeScriptArguments,
    training_args: UniMoeTrainingArguments,
    peft_config=None,
) -> tuple[UniMoeTrainer, DataReport]:
    """Trains `model` as `stage` says (`peft_config` for LoRA stages), saves it to `output_dir`."""
    stage = get_stage(stage)
    train, evaluation, report = _datasets(script_args, training_args, processor)
    check_encoders(model, report)
    collator = UniMoeDataCollator(
        processor,
        model_max_length=max_length(training_args, model),
        voice_modality=script_args.voice_modality,
        media_dir=report.media_dir,
    )
    if peft_config is None:
        apply_stage(model, stage)
    else:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    if training_args.activation_checkpointing:
        model.enable_input_require_grads()

    trainer = UniMoeTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
        processing_class=processor,
    )
    trainer.accelerator.print(f"{stage.name}: {stage.description}; data: {report.summary()}")
    trainer.train(resume_from_checkpoint=_resume_value(training_args.resume_from_checkpoint))
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    return trainer, report


def finish(trainer: UniMoeTrainer, report: DataReport, files: dict[str, Path] | None = None) -> StageResult:
    """Prints the data and skip summaries, ends the trainer (trackers, process group)."""
    trainer.accelerator.print(f"data: {report.summary()}; {trainer.skip_summary()}")
    result = StageResult(
        output_dir=Path(trainer.args.output_dir),
        log_history=list(trainer.state.log_history),
        data_report=report,
        skipped=dict(zip(SKIP_REASONS, trainer.skipped.tolist())),
        files=dict(files or {}),
    )
    trainer.end()
    return result


__all__ = ["StageResult", "finish", "load_model", "load_processor", "max_length", "run_stage", "setup"]
