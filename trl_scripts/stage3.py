"""Uni-MoE stage 3: the MoE, tuned with LoRA on mixed multimodal instructions.

Builds the MoE from the stage-2 experts (expert k ← `--expert_files` k, routers initialised
N(0, initializer_range), other weights from `--model_name_or_path`, the stage-1 checkpoint) into
`output_dir/base`, then trains a LoRA adapter (r 8, α 16, dropout 0.05 by default) on the
attention q/k/v/o and every expert's gate/up/down, with the routers and the projectors fully
trained (`unimoe_trl.stages.STAGES["stage3"]`, official §1.5/§5.3; `--train_projectors false` keeps
the stage-1 projectors). `--router_aux_loss_coef 0.01`
adds the load-balancing loss of the 8-expert recipe. Writes the adapter to `output_dir` and,
merged into the base, a plain checkpoint to `output_dir/merged`.

```bash
accelerate launch trl_scripts/stage3.py --config trl_scripts/configs/stage3.yaml

accelerate launch --config_file trl_scripts/configs/zero2.yaml trl_scripts/stage3.py \
    --model_name_or_path out/stage1 \
    --expert_files out/stage2-audio out/stage2-image out/stage2-speech out/stage2-image \
    --dataset_name data/mixed_instructions.json \
    --learning_rate 4e-5 --weight_decay 0 --warmup_steps 0.03 --lr_scheduler_type cosine \
    --per_device_train_batch_size 2 --gradient_accumulation_steps 4 --num_train_epochs 2 \
    --bf16 --activation_checkpointing --group_by_modality_length \
    --report_to none \
    --output_dir out/stage3
```
"""

from pathlib import Path

from accelerate import PartialState
from safetensors.torch import load_file

from unimoe_trl.arguments import ModelArguments, Stage3Arguments, UniMoeScriptArguments, UniMoeTrainingArguments
from unimoe_trl.experts import assemble_moe_checkpoint, merge_lora_checkpoint
from unimoe_trl.run import StageResult, finish, load_model, load_processor, run_stage, setup
from unimoe_trl.stages import get_stage, lora_config, without_projectors


def build_base(model_args: ModelArguments, training_args: UniMoeTrainingArguments, stage_args: Stage3Arguments) -> Path:
    """The MoE checkpoint stage 3 tunes: assembled from the experts into `output_dir/base`, or the given model."""
    if not stage_args.expert_files:
        return Path(model_args.model_name_or_path)
    base = Path(training_args.output_dir) / "base"
    state = PartialState()
    if state.is_main_process:
        assemble_moe_checkpoint(
            model_args.model_name_or_path,
            stage_args.expert_files,
            base,
            moe_layers=stage_args.moe_layers,
            num_experts_per_tok=stage_args.num_experts_per_tok,
            router_type=stage_args.router_type,
            seed=training_args.seed,
            routers=None if stage_args.router_init is None else load_file(stage_args.router_init),
        )
    state.wait_for_everyone()
    return base


def main(
    script_args: UniMoeScriptArguments,
    training_args: UniMoeTrainingArguments,
    model_args: ModelArguments,
    stage_args: Stage3Arguments | None = None,
) -> StageResult:
    stage_args = stage_args or Stage3Arguments()
    setup(training_args)
    base = build_base(model_args, training_args, stage_args)
    model = load_model(model_args, base)
    if not model.config.text_config.moe_layer_indices:
        raise ValueError(
            f"{base} has no MoE layer: give the stage-2 experts with --expert_files to build the MoE from them."
        )
    processor = load_processor(model_args)
    stage = get_stage("stage3") if stage_args.train_projectors else without_projectors(get_stage("stage3"))
    peft_config = lora_config(model, stage, stage_args.lora_r, stage_args.lora_alpha, stage_args.lora_dropout)
    trainer, report = run_stage(stage, model, processor, script_args, training_args, peft_config=peft_config)

    files = {"adapter": Path(training_args.output_dir), "base": base}
    if stage_args.merge:
        files["merged"] = Path(training_args.output_dir) / "merged"
        if trainer.accelerator.is_main_process:
            merge_lora_checkpoint(base, training_args.output_dir, files["merged"])
            trainer.accelerator.print(f"stage3: merged model written to {files['merged']}")
        trainer.accelerator.wait_for_everyone()
    return finish(trainer, report, files)


def make_parser():
    from trl import TrlParser

    return TrlParser((UniMoeScriptArguments, UniMoeTrainingArguments, ModelArguments, Stage3Arguments))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
