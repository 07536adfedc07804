"""Training Uni-MoE in its three progressive stages with `transformers.Trainer` (installed as `unimoe_trl`).

    stage 1  connectors on modality→text pairs          (stage1.py)
    stage 2  dense LLM MLP per modality → one expert each (stage2.py)
    stage 3  MoE from the stage-2 experts + LoRA          (stage3.py)

What each stage trains is data (`stages.STAGES`); the scripts share the dataset builder
(`data`), the collator (`collator`), the modality-grouped sampler (`sampler`), the trainer
(`trainer`) and the stage-2 → stage-3 hand-over (`experts`).
"""
