"""Convert the official Uni-MoE checkpoints into self-contained Hugging Face checkpoints.

    unimoe-convert --variant speech --base Uni-MoE-speech-base --delta Uni-MoE-speech-e2 \\
        --clip clip-vit-large-patch14-336 --whisper whisper-small --output uni-moe-speech-hf

    unimoe-convert --variant 8e --base Uni-MoE-speech-base --experts Uni-MoE-v2-Experts \\
        --delta Uni-MoE-v2-e2 --clip clip-vit-large-patch14-336 --whisper whisper-small --output uni-moe-v2-hf

Variants (`official_layout.VARIANTS`): `speech` (speech-base + speech-e2), `interval`
(speech-base-interval + speech-v1.5), `audio` (audio-base + audio-e2, with `--beats`), `8e`
(speech-base + v2-Experts + v2-e2). The official load order is replayed on the *lists* of the
input tensors (see `plan.py`), then the files are streamed one at a time into safetensors shards:
memory stays around one input shard plus one output shard.

    base shards ─► non_lora_trainables ─► + (alpha/r)·B·A (PEFT) ─► aligner ─► mlp_gates ─► encoders
    (8e: expert k = Experts file [k] + its own LoRA from k_mlp_experts.bin, merged)
"""

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Blip2QFormerConfig, CLIPVisionConfig, WhisperConfig
from transformers.dynamic_module_utils import custom_object_save

from modeling_unimoe import UniMoeConfig, UniMoeForConditionalGeneration
from modeling_unimoe.configuration_beats import BeatsConfig

from .beats import convert_official_beats_state_dict
from .checkpoint_io import TensorFile, TensorMeta, load_pickle
from .hub_files import (
    build_generation_config,
    load_tokenizer,
    placeholder_token_ids,
    read_json,
    save_processor,
    write_model_card,
)
from .official_layout import (
    BASE_IGNORED,
    BEATS_SHARED_COPY,
    DELTA_IGNORED,
    EIGHT_EXPERT_FILES,
    ENCODER_IGNORED,
    NON_LORA_LORA,
    ROUTER_LORA_DUPLICATE,
    ROUTER_LORA_IN_GATES,
    TOKENIZER_FILES,
    VARIANTS,
    ConversionError,
    Drop,
    IgnoredFile,
    Variant,
    classify_folder,
    map_base_key,
    map_clip_key,
    map_expert_lora_key,
    map_experts_file_key,
    map_gates_key,
    map_whisper_key,
    parse_lora_key,
    strip_peft_prefix,
)
from .plan import ConversionPlan, TensorRef
from .shard_writer import ShardWriter, parse_size, plan_shards

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ROUTER_LORA_MODES = ("official", "merge")


@dataclass
class SourcePaths:
    """Where the inputs are. `tokenizer` defaults to `base` (the official loader reads it there)."""

    base: Path
    delta: Path
    clip: Path
    whisper: Path | None = None
    beats: Path | None = None
    experts: Path | None = None
    tokenizer: Path | None = None

    def __post_init__(self):
        for name in ("base", "delta", "clip", "whisper", "beats", "experts", "tokenizer"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        self.tokenizer = self.tokenizer or self.base

    def check(self, variant: Variant) -> None:
        needed = {"base", "delta", "clip", "whisper" if variant.sound == "speech" else "beats"}
        needed |= {"experts"} if variant.eight_experts else set()
        unused = {"whisper", "beats", "experts"} - needed
        missing = sorted(name for name in needed if getattr(self, name) is None)
        if missing:
            raise ConversionError(f"The {variant.name!r} variant needs --{' --'.join(missing)}.")
        extra = sorted(name for name in unused if getattr(self, name) is not None)
        if extra:
            raise ConversionError(f"The {variant.name!r} variant does not use --{' --'.join(extra)}.")
        for name in sorted(needed | {"tokenizer"}):
            path = getattr(self, name)
            if not (path.is_file() if name == "beats" else path.is_dir()):
                kind = "file" if name == "beats" else "folder"
                raise ConversionError(f"--{name} {path}: no such {kind}.")


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


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


def build_text_config(official: dict, variant: Variant) -> dict:
    """The LLaMA + MoE hyper-parameters of an official `config.json` (delta folder)."""
    _require(official.get("rope_scaling") is None, f"rope_scaling={official.get('rope_scaling')} is not supported.")
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
        _require(
            official.get("moe_type", "dense") == "dense",
            f"moe_type={official['moe_type']!r}: only 'dense' (MoE in every layer) was released.",
        )
        _require(
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
    _require(
        official.get("mm_projector_type") == "mlp2x_gelu",
        f"mm_projector_type={official.get('mm_projector_type')!r}: only 'mlp2x_gelu' was released.",
    )
    _require(
        not official.get("mm_use_im_start_end") and not official.get("mm_use_im_patch_token"),
        "mm_use_im_start_end / mm_use_im_patch_token (extra image tokens) are not supported.",
    )
    select = official.get("mm_vision_select_feature", "patch")
    _require(select in ("patch", "cls_patch"), f"mm_vision_select_feature={select!r} is not supported.")
    connectors = {
        "vision_feature_layer": official.get("mm_vision_select_layer", -2),
        "vision_feature_select_strategy": "default" if select == "patch" else "full",
    }
    speech_config = audio_config = qformer_config = None
    if variant.sound == "speech":
        projector = official.get("audio_projector_type", "linear")
        _require(projector == "linear", f"audio_projector_type={projector!r}: only 'linear' was released.")
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


# ------------------------------------------------------------------------------- inputs


def base_weight_files(folder: Path) -> list[Path]:
    """The base model's shards, from its index (or the single weights file)."""
    for index_name in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        index = read_json(folder / index_name)
        if index is not None:
            files = sorted(set(index["weight_map"].values()))
            missing = [name for name in files if not (folder / name).is_file()]
            _require(not missing, f"{folder / index_name} lists shards that are missing: {missing}")
            return [folder / name for name in files]
    for name in ("pytorch_model.bin", "model.safetensors"):
        if (folder / name).is_file():
            return [folder / name]
    raise ConversionError(f"{folder} has no pytorch_model.bin(.index.json) or model.safetensors(.index.json).")


def encoder_weight_file(folder: Path) -> list[Path]:
    """The public encoder folder's weights: safetensors if present, else the PyTorch pickle."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    try:
        return base_weight_files(folder)
    except ConversionError:
        raise ConversionError(f"{folder} has no model.safetensors or pytorch_model.bin.") from None


class OfficialCheckpoint:
    """Replays the official load order of one variant into a `ConversionPlan`."""

    def __init__(self, variant: Variant, paths: SourcePaths, *, router_lora: str = "official"):
        _require(
            router_lora in ROUTER_LORA_MODES, f"router_lora must be one of {ROUTER_LORA_MODES}, got {router_lora!r}."
        )
        self.variant = variant
        self.paths = paths
        self.router_lora = router_lora
        self.plan = ConversionPlan()
        self.ignored: list[IgnoredFile] = []
        self.official_config = read_json(paths.delta / "config.json")
        _require(self.official_config is not None, f"{paths.delta} has no config.json.")
        self.adapter_config = read_json(paths.delta / "adapter_config.json")
        _require(self.adapter_config is not None, f"{paths.delta} has no adapter_config.json (PEFT LoRA).")
        self.beats_cfg = None

    def _file(self, path: Path, **kwargs) -> TensorFile:
        root = path.parent.name
        return TensorFile(path, label=f"{root}/{path.name}", **kwargs)

    def _delta_file(self, name: str, *, required: bool = True) -> TensorFile | None:
        path = self.paths.delta / name
        if not path.is_file():
            _require(not required, f"{self.paths.delta} has no {name}.")
            return None
        return self._file(path)

    def collect(self) -> ConversionPlan:
        """Lists every input file and builds the plan, in the official load order."""
        self._inventory()
        if self.variant.sound == "speech":
            self._whisper()  # the aligner's decoder starts as Whisper's (replaced below)
        self._base()
        if self.variant.eight_experts:
            self._experts()
        self._non_lora_trainables()
        self._adapter()
        self._aligner()
        self._gates()
        self._clip()
        if self.variant.sound == "audio":
            self._beats()
        return self.plan

    # -------------------------------------------------------------- files

    def _inventory(self) -> None:
        paths, variant = self.paths, self.variant
        self.base_files = base_weight_files(paths.base)
        used = {p.name for p in self.base_files} | {"generation_config.json"}
        used |= set(TOKENIZER_FILES) if paths.tokenizer == paths.base else set()
        self.ignored += classify_folder(paths.base, used, BASE_IGNORED)
        delta_used = {"config.json", "adapter_config.json", "adapter_model.bin", "adapter_model.safetensors"}
        delta_used |= {"non_lora_trainables.bin", "mm_audio_aligner.bin", "mlp_gates.bin"}
        if variant.eight_experts:
            delta_used |= {f"{k}_mlp_experts.bin" for k in range(len(EIGHT_EXPERT_FILES))}
            self.ignored += classify_folder(paths.experts, {f"{name}.bin" for name in EIGHT_EXPERT_FILES}, {})
        _require(not (paths.delta / "fm_adapter.bin").exists(), "fm_adapter.bin (use_fm_block) is not supported.")
        self.ignored += classify_folder(paths.delta, delta_used, DELTA_IGNORED)
        self.clip_files = encoder_weight_file(paths.clip)
        clip_used = {p.name for p in self.clip_files} | {"config.json", "preprocessor_config.json"}
        self.ignored += classify_folder(paths.clip, clip_used, ENCODER_IGNORED)
        if variant.sound == "speech":
            self.whisper_files = encoder_weight_file(paths.whisper)
            whisper_used = {p.name for p in self.whisper_files} | {"config.json", "preprocessor_config.json"}
            self.ignored += classify_folder(paths.whisper, whisper_used, ENCODER_IGNORED)

    def _route_all(self, file: TensorFile, mapper) -> None:
        for ref in self.plan.add_file(file):
            self.plan.route(ref, mapper(ref.key))

    def _whisper(self) -> None:
        for path in self.whisper_files:
            self._route_all(self._file(path), map_whisper_key)

    def _base(self) -> None:
        layers_with_experts = set()
        for path in self.base_files:
            file = self._file(path)
            self._route_all(file, lambda key: map_base_key(key, self.variant))
            layers_with_experts |= {int(k.split(".")[2]) for k in file.metadata() if ".mlp.experts." in k}
        if not self.variant.eight_experts:
            self._check_moe_layout(layers_with_experts)

    def _check_moe_layout(self, found: set[int]) -> None:
        num_layers = self.official_config["num_hidden_layers"]
        step = 1 if self.variant.moe_layers == "all" else 2
        expected = set(range(0, num_layers, step))
        _require(
            found == expected,
            f"The base checkpoint has MoE experts in layers {sorted(found)}, but the {self.variant.name!r} variant "
            f"has them in {self.variant.moe_layers} layers {sorted(expected)}: is this the right --variant / --base?",
        )

    def _experts(self) -> None:
        """8-expert model: expert k = dense MLP from its Experts file + its own LoRA (merged)."""
        scale = self.official_config["lora_alpha"] / self.official_config["lora_r"]
        files = {name: self._file(self.paths.experts / f"{name}.bin") for name in dict.fromkeys(EIGHT_EXPERT_FILES)}
        for expert, name in enumerate(EIGHT_EXPERT_FILES):
            for ref in self.plan.add_file(files[name]):
                self.plan.route(ref, map_experts_file_key(ref.key, expert))
        for expert in range(len(EIGHT_EXPERT_FILES)):
            file = self._delta_file(f"{expert}_mlp_experts.bin")
            self._add_lora_pairs(file, lambda key, e=expert: map_expert_lora_key(key, e), scale)

    def _add_lora_pairs(self, file: TensorFile, mapper, scale: float, *, keep_deltas_for: str | None = None) -> None:
        """Routes a file whose keys map to `(target, "A" | "B")` (LoRA halves), `Drop` or `None`."""
        self.plan.add_file(file)
        pairs: dict[str, dict[str, TensorRef]] = {}
        for key, original in strip_peft_prefix(list(file.metadata())).items():
            ref = TensorRef(file, original)
            mapped = mapper(key)
            if isinstance(mapped, tuple):
                pairs.setdefault(mapped[0], {})[mapped[1]] = ref
            else:
                self.plan.route(ref, mapped)
        for target, halves in pairs.items():
            if set(halves) != {"A", "B"}:
                self.plan.errors.append(f"{file.label}: LoRA of {target} has only lora_{''.join(halves)}")
                for ref in halves.values():
                    self.plan.status[ref] = "incomplete LoRA pair"
                continue
            self.plan.add_lora(target, halves["A"], halves["B"], scale)

    def _non_lora_trainables(self) -> None:
        file = self._delta_file("non_lora_trainables.bin")
        self.plan.add_file(file)
        for key, original in strip_peft_prefix(list(file.metadata())).items():
            mapped = Drop(NON_LORA_LORA) if ".lora_" in key else map_base_key(key, self.variant)
            self.plan.route(TensorRef(file, original), mapped)

    def _adapter(self) -> None:
        config = self.adapter_config
        for option in ("rank_pattern", "alpha_pattern"):
            _require(not config.get(option), f"adapter_config.json: {option} is not supported.")
        _require(
            not config.get("use_rslora") and not config.get("fan_in_fan_out"),
            "adapter_config.json: use_rslora / fan_in_fan_out are not supported.",
        )
        file = self._delta_file("adapter_model.safetensors", required=False) or self._delta_file("adapter_model.bin")

        def mapper(key: str):
            parsed = parse_lora_key(key)
            if parsed is None:
                return None
            target = map_base_key(parsed[0] + ".weight", self.variant)
            return (target, parsed[1]) if isinstance(target, str) else None

        self._add_lora_pairs(file, mapper, config["lora_alpha"] / config["r"])

    def _aligner(self) -> None:
        file = self._delta_file("mm_audio_aligner.bin")
        self.plan.add_file(file)
        for key, original in strip_peft_prefix(list(file.metadata())).items():
            self.plan.route(TensorRef(file, original), map_base_key(key, self.variant))

    def _gates(self) -> None:
        file = self._delta_file("mlp_gates.bin", required=False)
        if file is None:
            return
        self.plan.add_file(file)
        merge = self.router_lora == "merge"
        for key, original in strip_peft_prefix(list(file.metadata())).items():
            ref, mapped = TensorRef(file, original), map_gates_key(key, self.variant)
            if isinstance(mapped, tuple):  # router LoRA halves saved beside the router
                self.plan.drop(ref, ROUTER_LORA_DUPLICATE if merge else ROUTER_LORA_IN_GATES)
            elif isinstance(mapped, str):
                self.plan.assign(mapped, ref, keep_deltas=merge)
            else:
                self.plan.route(ref, None)

    def _clip(self) -> None:
        for path in self.clip_files:
            self._route_all(self._file(path), map_clip_key)

    def _beats(self) -> None:
        file = TensorFile(self.paths.beats, label=self.paths.beats.name, entry="model")
        checkpoint = load_pickle(self.paths.beats)
        _require(
            isinstance(checkpoint, dict) and {"cfg", "model"} <= checkpoint.keys(),
            f"{self.paths.beats} is not an official BEATs checkpoint ({{'cfg', 'model'}}).",
        )
        self.beats_cfg = dict(checkpoint["cfg"])
        kept = convert_official_beats_state_dict(checkpoint["model"], BeatsConfig.from_official_cfg(self.beats_cfg))
        del checkpoint
        for ref in self.plan.add_file(file):
            self.plan.route(ref, "model.audio_tower." + ref.key if ref.key in kept else Drop(BEATS_SHARED_COPY))


# ------------------------------------------------------------------------------- writing


def _prepare_output(output_dir: Path) -> None:
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConversionError(f"--output {output_dir} exists and is not empty.")
    output_dir.mkdir(parents=True, exist_ok=True)


def _save_config_and_code(model: UniMoeForConditionalGeneration, config: UniMoeConfig, output_dir: Path) -> None:
    """config.json plus the remote-code files, with the auto_map `save_pretrained` would write."""
    from modeling_unimoe.modeling_unimoe import EXTRA_AUTO_CLASSES

    custom_object_save(model, output_dir, config=config)
    target = config.auto_map["AutoModel"]
    config.auto_map = {**config.auto_map, **dict.fromkeys(EXTRA_AUTO_CLASSES, target)}
    config.save_pretrained(output_dir)


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
    target_dtypes = {name: dtype if meta.dtype.is_floating_point else meta.dtype for name, meta in expected.items()}
    order = [name for _, names in plan.execution_order() for name in names]
    sizes = [(name, TensorMeta(expected[name].shape, target_dtypes[name]).nbytes) for name in order]
    writer = ShardWriter(output_dir, plan_shards(sizes, parse_size(max_shard_size)))
    plan.run(target_dtypes, writer.add, progress=progress)
    writer.finish()

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
        total_bytes=writer.total_size,
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
