"""Convert the official Uni-MoE checkpoints into self-contained Hugging Face checkpoints.

    unimoe-convert --variant speech --base Uni-MoE-speech-base --delta Uni-MoE-speech-e2 \\
        --clip clip-vit-large-patch14-336 --whisper whisper-small --output uni-moe-speech-hf

    unimoe-convert --variant 8e --base Uni-MoE-speech-base --experts Uni-MoE-v2-Experts \\
        --delta Uni-MoE-v2-e2 --clip clip-vit-large-patch14-336 --whisper whisper-small --output uni-moe-v2-hf

Variants (`official_layout.VARIANTS`): `speech` (speech-base + speech-e2), `interval`
(speech-base-interval + speech-v1.5), `audio` (audio-base + audio-e2, with `--beats`), `8e`
(speech-base + v2-Experts + v2-e2). The official load order is replayed on the *lists* of the
input tensors (`official_loader.py`, `plan.py`), then the files are streamed one at a time into safetensors shards:
memory stays around one input shard plus one output shard.

    base shards ─► non_lora_trainables ─► + (alpha/r)·B·A (PEFT) ─► aligner ─► mlp_gates ─► encoders
    (8e: expert k = Experts file [k] + its own LoRA from k_mlp_experts.bin, merged)
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Blip2QFormerConfig, CLIPVisionConfig, WhisperConfig
from transformers.dynamic_module_utils import custom_object_save

from modeling_unimoe import UniMoeConfig, UniMoeForConditionalGeneration
from modeling_unimoe.configuration_beats import BeatsConfig

from .checkpoint_io import TensorMeta
from .hub_files import (
    build_generation_config,
    load_tokenizer,
    placeholder_token_ids,
    read_json,
    save_processor,
    write_model_card,
)
from .official_layout import VARIANTS, ConversionError, IgnoredFile, Variant
from .official_loader import ROUTER_LORA_MODES, OfficialCheckpoint, SourcePaths, require
from .plan import ConversionPlan
from .shard_writer import ShardWriter, parse_size, plan_shards

__all__ = ["ConversionReport", "SourcePaths", "convert", "main", "push_to_hub"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class ConversionReport:
    variant: str
    output_dir: Path
    num_parameters: int
    total_bytes: int
    num_consumed: int
    dropped: dict[str, list[str]]
    ignored_files: list[IgnoredFile] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"Converted Uni-MoE {self.variant!r} into {self.output_dir}: {self.num_parameters} tensors, "
            f"{self.total_bytes / 1e9:.2f} GB, from {self.num_consumed} source tensors.",
            "Dropped source tensors:",
        ]
        for reason, keys in sorted(self.dropped.items()):
            lines.append(f"  {len(keys):6d}  {reason}  (e.g. {keys[0]})")
        lines.append("Files not read:")
        lines += [f"  {ignored.path}: {ignored.reason}" for ignored in self.ignored_files]
        return "\n".join(lines)


# ------------------------------------------------------------------------------- config


def build_text_config(official: dict, variant: Variant) -> dict:
    """The LLaMA + MoE hyper-parameters of an official `config.json` (delta folder)."""
    require(official.get("rope_scaling") is None, f"rope_scaling={official.get('rope_scaling')} is not supported.")
    text = {
        key: official[key]
        for key in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "rms_norm_eps",
            "hidden_act",
            "initializer_range",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
        )
        if key in official
    }
    text["num_key_value_heads"] = official.get("num_key_value_heads") or official["num_attention_heads"]
    text["rope_theta"] = float(official.get("rope_theta", 10000.0))
    text["tie_word_embeddings"] = bool(official.get("tie_word_embeddings", False))
    text["num_experts"] = official["num_experts"]
    text["num_experts_per_tok"] = official.get("num_experts_per_tok", 2)
    text["moe_layers"] = variant.moe_layers
    if variant.eight_experts:
        require(
            official.get("moe_type", "dense") == "dense",
            f"moe_type={official['moe_type']!r}: only 'dense' (MoE in every layer) was released.",
        )
        require(
            not official.get("use_fm_block"),
            "use_fm_block=true (per-modality Conv1d before the router) is not supported.",
        )
        text["router_type"] = "gshard_top2"
        text["router_aux_loss_coef"] = (
            float(official.get("aux_balance_loss_coef", 0.01)) if official.get("aux_balance_loss") else 0.0
        )
    else:
        text["router_type"] = "topk_softmax"
        text["router_aux_loss_coef"] = 0.0  # the official 4-expert training has no load-balancing loss
    return text


def build_config(
    variant: Variant,
    official: dict,
    *,
    paths: SourcePaths,
    beats_cfg: dict | None,
    audio_qformer_config: dict | None,
    token_ids: dict[str, int],
    dtype: torch.dtype,
) -> UniMoeConfig:
    """`UniMoeConfig` from the official `config.json` (delta folder) and the encoder folders."""
    require(
        official.get("mm_projector_type") == "mlp2x_gelu",
        f"mm_projector_type={official.get('mm_projector_type')!r}: only 'mlp2x_gelu' was released.",
    )
    require(
        not official.get("mm_use_im_start_end") and not official.get("mm_use_im_patch_token"),
        "mm_use_im_start_end / mm_use_im_patch_token (extra image tokens) are not supported.",
    )
    select = official.get("mm_vision_select_feature", "patch")
    require(select in ("patch", "cls_patch"), f"mm_vision_select_feature={select!r} is not supported.")
    connectors = {
        "vision_feature_layer": official.get("mm_vision_select_layer", -2),
        "vision_feature_select_strategy": "default" if select == "patch" else "full",
    }
    speech_config = audio_config = qformer_config = None
    if variant.sound == "speech":
        projector = official.get("audio_projector_type", "linear")
        require(projector == "linear", f"audio_projector_type={projector!r}: only 'linear' was released.")
        speech_config = WhisperConfig.from_pretrained(paths.whisper)
        connectors["speech_query_tokens"] = official.get("query_tokens_size", 50)
    else:
        audio_config = BeatsConfig.from_official_cfg(beats_cfg)
        # Not in any config file: the official code builds BLIP-2's default Q-Former reading BEATs.
        qformer_config = Blip2QFormerConfig(
            **{"encoder_hidden_size": audio_config.hidden_size, **(audio_qformer_config or {})}
        )
        connectors["audio_query_tokens"] = official.get("query_tokens_size", 50)
    config = UniMoeConfig(
        text_config=build_text_config(official, variant),
        vision_config=CLIPVisionConfig.from_pretrained(paths.clip),
        speech_config=speech_config,
        audio_config=audio_config,
        audio_qformer_config=qformer_config,
        **connectors,
        **token_ids,
    )
    config.dtype = dtype
    return config


def expected_state(config: UniMoeConfig) -> tuple[UniMoeForConditionalGeneration, dict[str, TensorMeta]]:
    """The target model on the meta device (no memory) and its state-dict names, shapes, dtypes."""
    with torch.device("meta"):
        model = UniMoeForConditionalGeneration(config)
    return model, {name: TensorMeta(tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}


# ------------------------------------------------------------------------------- writing


def _prepare_output(output_dir: Path) -> None:
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConversionError(f"--output {output_dir} exists and is not empty.")
    output_dir.mkdir(parents=True, exist_ok=True)


def _save_config_and_code(model: UniMoeForConditionalGeneration, config: UniMoeConfig, output_dir: Path) -> None:
    """config.json plus the remote-code files, with the auto_map `save_pretrained` would write."""
    from modeling_unimoe.hub_unimoe import add_custom_pipeline
    from modeling_unimoe.modeling_unimoe import EXTRA_AUTO_CLASSES

    custom_object_save(model, output_dir, config=config)
    target = config.auto_map["AutoModel"]
    config.auto_map = {**config.auto_map, **dict.fromkeys(EXTRA_AUTO_CLASSES, target)}
    add_custom_pipeline(config)  # `pipeline("any-to-text", model=output_dir, trust_remote_code=True)`
    config.save_pretrained(output_dir)


def _write_weights(
    plan: ConversionPlan,
    expected: dict[str, TensorMeta],
    output_dir: Path,
    *,
    dtype: torch.dtype,
    max_shard_size: int | str,
    progress: bool,
) -> int:
    """Streams the plan into safetensors shards laid out in execution order; returns the bytes written."""
    target_dtypes = {name: dtype if meta.dtype.is_floating_point else meta.dtype for name, meta in expected.items()}
    order = [name for _, names in plan.execution_order() for name in names]
    sizes = [(name, TensorMeta(expected[name].shape, target_dtypes[name]).nbytes) for name in order]
    writer = ShardWriter(output_dir, plan_shards(sizes, parse_size(max_shard_size)))
    plan.run(target_dtypes, writer.add, progress=progress)
    writer.finish()
    return writer.total_size


def convert(
    variant: str | Variant,
    paths: SourcePaths,
    output_dir: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: int | str = "5GB",
    router_lora: str = "official",
    audio_qformer_config: dict | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Converts one released variant into a Hub folder; returns what was consumed and dropped.

    Args:
        variant: a key of `VARIANTS` (`"speech"`, `"interval"`, `"audio"`, `"8e"`).
        paths: the input folders and files.
        output_dir: created; must be empty if it exists.
        dtype: dtype of the floating-point weights.
        max_shard_size: largest safetensors shard (bytes or e.g. `"5GB"`).
        router_lora: `"official"` (default) reproduces the official loader, where `mlp_gates.bin`
            overwrites the routers after their LoRA was merged; `"merge"` keeps the router LoRA on
            top of `mlp_gates.bin` (the router the model was trained with).
        audio_qformer_config: `Blip2QFormerConfig` overrides for the audio variant (the official
            code hard-codes BLIP-2's default Q-Former; tests use tiny ones).

    Raises:
        ConversionError: listing every unknown, missing or mis-shaped tensor, before writing weights.
    """
    variant = VARIANTS[variant] if isinstance(variant, str) else variant
    paths.check(variant)
    output_dir = Path(output_dir)
    source = OfficialCheckpoint(variant, paths, router_lora=router_lora)
    plan = source.collect()

    tokenizer = load_tokenizer(paths.tokenizer)
    config = build_config(
        variant,
        source.official_config,
        paths=paths,
        beats_cfg=source.beats_cfg,
        audio_qformer_config=audio_qformer_config,
        token_ids=placeholder_token_ids(tokenizer, source.official_config["vocab_size"]),
        dtype=dtype,
    )
    model, expected = expected_state(config)
    plan.validate(expected)

    _prepare_output(output_dir)
    total_bytes = _write_weights(
        plan, expected, output_dir, dtype=dtype, max_shard_size=max_shard_size, progress=progress
    )
    _save_config_and_code(model, config, output_dir)
    build_generation_config(variant, read_json(paths.base / "generation_config.json"), config).save_pretrained(
        output_dir
    )
    save_processor(
        output_dir, tokenizer, config, clip_dir=paths.clip, whisper_dir=paths.whisper, tokenizer_dir=paths.tokenizer
    )
    report = ConversionReport(
        variant=variant.name,
        output_dir=output_dir,
        num_parameters=len(expected),
        total_bytes=total_bytes,
        num_consumed=plan.num_consumed(),
        dropped=plan.dropped(),
        ignored_files=source.ignored,
    )
    write_model_card(
        output_dir,
        variant,
        sources={
            name: getattr(paths, name).name
            for name in ("base", "experts", "delta", "clip", "whisper", "beats", "tokenizer")
            if getattr(paths, name)
        },
        dropped=report.dropped,
        ignored_files=[f"`{i.path.parent.name}/{i.path.name}`: {i.reason}" for i in source.ignored],
        dtype=str(dtype).removeprefix("torch."),
        router_lora=router_lora,
    )
    return report


def push_to_hub(output_dir: Path, repo_id: str, *, private: bool = False) -> str:
    """Uploads the converted folder to `repo_id` (created if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(
        api.upload_folder(folder_path=output_dir, repo_id=repo_id, commit_message="Convert official Uni-MoE checkpoint")
    )


# ------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="unimoe-convert",
        description="Convert official Uni-MoE checkpoints into a self-contained Hugging Face checkpoint.",
        epilog="See docs/conversion.md for one command per released variant.",
    )
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS), help="which released model")
    parser.add_argument("--base", required=True, type=Path, help="base folder (e.g. Uni-MoE-speech-base)")
    parser.add_argument("--delta", required=True, type=Path, help="stage-3 folder (e.g. Uni-MoE-speech-e2)")
    parser.add_argument("--experts", type=Path, help="8e only: the Uni-MoE-v2-Experts folder")
    parser.add_argument("--clip", required=True, type=Path, help="clip-vit-large-patch14-336 folder")
    parser.add_argument("--whisper", type=Path, help="speech variants: whisper-small folder")
    parser.add_argument("--beats", type=Path, help="audio variant: BEATs_iter3_plus_AS2M.pt")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: --base, as the official loader)")
    parser.add_argument("--output", required=True, type=Path, help="output folder (created, must be empty)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument(
        "--router-lora",
        default="official",
        choices=ROUTER_LORA_MODES,
        help="interval/audio: 'official' lets mlp_gates.bin overwrite the merged router LoRA (as the official "
        "loader); 'merge' adds the router LoRA on top of mlp_gates.bin",
    )
    parser.add_argument("--audio-qformer-config", type=Path, help="JSON of Blip2QFormerConfig overrides (audio)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the result to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> ConversionReport:
    args = parse_args(argv)
    paths = SourcePaths(
        base=args.base,
        delta=args.delta,
        clip=args.clip,
        whisper=args.whisper,
        beats=args.beats,
        experts=args.experts,
        tokenizer=args.tokenizer,
    )
    qformer = json.loads(args.audio_qformer_config.read_text()) if args.audio_qformer_config else None
    try:
        report = convert(
            args.variant,
            paths,
            args.output,
            dtype=DTYPES[args.dtype],
            max_shard_size=args.max_shard_size,
            router_lora=args.router_lora,
            audio_qformer_config=qformer,
            progress=not args.no_progress,
        )
    except ConversionError as error:
        sys.exit(f"unimoe-convert: {error}")
    print(report.summary())
    if args.push_to_hub:
        print(f"pushed: {push_to_hub(args.output, args.push_to_hub, private=args.private)}")
    return report


if __name__ == "__main__":
    main()
