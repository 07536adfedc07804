"""Uni-MoE stage 2: one modality-specific expert.

Trains the dense LLM MLPs (`model.layers.*.mlp.{gate,up,down}_proj`) on one modality's
instruction data; everything else is frozen (`unimoe_trl.stages.STAGES["stage2"]`). Run it once
per modality from the stage-1 checkpoint (dense: `text_config.moe_layers=[]`; a MoE checkpoint
can be made dense with `unimoe_trl.experts.densify_checkpoint`). Each run saves its model and
its expert, the MLP weights of every layer, as `output_dir/mlp_expert.safetensors`, which
stage 3 turns into one expert of the MoE.

```bash
accelerate launch trl_scripts/stage2.py --config trl_scripts/configs/stage2.yaml

for modality in image speech; do
  accelerate launch --config_file trl_scripts/configs/ddp.yaml trl_scripts/stage2.py \
      --model_name_or_path out/stage1 \
      --dataset_name data/${modality}_instructions.json \
      --modality ${modality} \
      --learning_rate 2e-5 \
      --per_device_train_batch_size 4 \
      --num_train_epochs 1 \
      --report_to none \
      --output_dir out/stage2-${modality}
done
```
"""

from unimoe_trl.arguments import ModelArguments, Stage2Arguments, UniMoeScriptArguments, UniMoeTrainingArguments
from unimoe_trl.experts import extract_mlp_expert
from unimoe_trl.run import StageResult, finish, load_model, load_processor, run_stage, setup


def main(
    script_args: UniMoeScriptArguments,
    training_args: UniMoeTrainingArguments,
    model_args: ModelArguments,
    stage_args: Stage2Arguments | None = None,
) -> StageResult:
    stage_args = stage_args or Stage2Arguments()
    setup(training_args)
    model = load_model(model_args)
    moe_layers = model.config.text_config.moe_layer_indices
    if moe_layers:
        raise ValueError(
            f"Stage 2 trains the dense MLPs that become experts, but this checkpoint has MoE layers {moe_layers}: "
            "start from a dense one (text_config.moe_layers=[]), e.g. unimoe_trl.experts.densify_checkpoint."
        )
    processor = load_processor(model_args)
    trainer, report = run_stage("stage2", model, processor, script_args, training_args)

    expert = None
    if trainer.accelerator.is_main_process:
        metadata = {"stage": "2", "modality": stage_args.modality or "", "dataset": script_args.dataset_name}
        expert = extract_mlp_expert(training_args.output_dir, metadata=metadata)
        trainer.accelerator.print(f"stage2: expert written to {expert}")
    trainer.accelerator.wait_for_everyone()
    return finish(trainer, report, {"model": trainer.args.output_dir, "expert": expert})


def make_parser():
    from trl import TrlParser

    return TrlParser((UniMoeScriptArguments, UniMoeTrainingArguments, ModelArguments, Stage2Arguments))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
