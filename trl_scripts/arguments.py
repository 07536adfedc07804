"""Argument dataclasses of the stage scripts (parsed by `trl.TrlParser`, YAML `--config` included).

Every stage takes `(UniMoeScriptArguments, UniMoeTrainingArguments, ModelArguments)`; stage 2
adds `Stage2Arguments`, stage 3 `Stage3Arguments`. Built by hand, they drive `stageN.main` from
Python too.
"""

from dataclasses import dataclass, field

from trl import ScriptArguments

from .data import VOICE_MODALITIES
from .trainer import UniMoeTrainingArguments


@dataclass
class ModelArguments:
    """The checkpoint a stage starts from."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "UniMoe checkpoint folder or Hub id (its processor is loaded from it too)."}
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor location, if not the model's."}
    )
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype to load: 'auto', 'float32', 'bfloat16' or 'float16'."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention implementation: 'sdpa', 'eager', 'flash_attention_2', ..."}
    )


@dataclass
class UniMoeScriptArguments(ScriptArguments):
    """TRL's dataset arguments plus the official-format options.

    `dataset_name` is an official JSON/JSONL file, a `save_to_disk` folder, or anything
    `datasets.load_dataset` reads, with columns `conversations` and optional `image`, `video`, `voice`.
    """

    media_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of relative media paths (default: the JSON file's folder)."},
    )
    voice_modality: str = field(
        default="speech",
        metadata={
            "help": "What the `voice` files are: 'speech' (Whisper path), 'audio' (BEATs path), or 'placeholder' "
            "(each file's placeholder decides: `<speech>` → Whisper, `<audio>` → BEATs).",
            "choices": list(VOICE_MODALITIES),
        },
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for checking the dataset."})


@dataclass
class Stage2Arguments:
    modality: str | None = field(
        default=None, metadata={"help": "Name of this run's modality, recorded in the expert file (e.g. 'image')."}
    )


@dataclass
class Stage3Arguments:
    expert_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Stage-2 expert files (or output folders), expert k ← file k; a file may repeat. "
            "Empty: the model is already a MoE checkpoint."
        },
    )
    moe_layers: str = field(default="all", metadata={"help": "MoE layers: 'all', 'even' or indices '0,2,4'."})
    num_experts_per_tok: int = field(default=2, metadata={"help": "Top-k of the new routers."})
    router_type: str = field(default="topk_softmax", metadata={"help": "'topk_softmax' (4e) or 'gshard_top2' (8e)."})
    router_init: str | None = field(
        default=None,
        metadata={
            "help": "A safetensors file of initial router weights (`model.layers.{L}.mlp.gate.weight`, one "
            "(num_experts, hidden) tensor per MoE layer); default: drawn N(0, initializer_range) as officially."
        },
    )
    train_projectors: bool = field(
        default=True,
        metadata={
            "help": "Train the mm/speech/audio projectors fully, as officially; False keeps the stage-1 "
            "connectors as they are (the demo: at its high learning rates stage 3 moved them off)."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (official 8)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (official 16)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (official 0.05)."})
    merge: bool = field(default=True, metadata={"help": "Also write the merged model to output_dir/merged."})


__all__ = ["ModelArguments", "Stage2Arguments", "Stage3Arguments", "UniMoeScriptArguments", "UniMoeTrainingArguments"]
