"""Uni-MoE stage 1: cross-modal alignment.

Trains the connectors (image `mm_projector`; speech `speech_aligner` + `speech_projector`; audio
`audio_aligner` + `audio_projector`) on modality→text pairs; the encoder towers and the LLM stay
frozen (`unimoe_trl.stages.STAGES["stage1"]`). Start from a dense checkpoint
(`text_config.moe_layers=[]`): stages 1 and 2 run without the MoE structure.

```bash
accelerate launch trl_scripts/stage1.py --config trl_scripts/configs/stage1.yaml

accelerate launch --config_file trl_scripts/configs/ddp.yaml trl_scripts/stage1.py \
    --model_name_or_path path/to/dense-unimoe \
    --dataset_name data/alignment_pairs.json \
    --voice_modality speech \
    --learning_rate 1e-3 \
    --per_device_train_batch_size 8 \
    --num_train_epochs 1 \
    --group_by_modality_length \
    --report_to none \
    --output_dir out/stage1
```
"""

from unimoe_trl.arguments import ModelArguments, UniMoeScriptArguments, UniMoeTrainingArguments
from unimoe_trl.run import StageResult, finish, load_model, load_processor, run_stage, setup


def main(
    script_args: UniMoeScriptArguments, training_args: UniMoeTrainingArguments, model_args: ModelArguments
) -> StageResult:
    setup(training_args)
    model = load_model(model_args)
    processor = load_processor(model_args)
    trainer, report = run_stage("stage1", model, processor, script_args, training_args)
    return finish(trainer, report, {"model": trainer.args.output_dir})


def make_parser():
    from trl import TrlParser

    return TrlParser((UniMoeScriptArguments, UniMoeTrainingArguments, ModelArguments))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
