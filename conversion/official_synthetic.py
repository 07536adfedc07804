"""Synthetic checkpoints in the exact layout of the released Uni-MoE checkpoints.

Random weights with the official folder names, file names, key names and prefixes: the base's
`pytorch_model-0000i-of-0000N.bin` shards (with `rotary_emb.inv_freq`, tower copies and the
random Whisper copies), the stage-3 folder (peft-0.4 `adapter_model.bin`, `non_lora_trainables.bin`
with its `base_model.model.` prefix, `mm_audio_aligner.bin`, `mlp_gates.bin`, 8-expert
`{k}_mlp_experts.bin`, a `training_args.bin` that is not weights), the 8-expert Experts files, and
the public encoders (`clip-vit-large-patch14-336`, `whisper-small`, BEATs' `{"cfg", "model"}`
pickle). Tests convert them with the real converter; `benchmarks/bench_conversion_memory.py`
writes a multi-GB one to measure the converter's memory.

    paths = write_official_checkpoint(tmp_dir, "speech")   # -> SourcePaths for convert()
"""

import argparse
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, WhisperConfig, WhisperFeatureExtractor
from transformers import WhisperForConditionalGeneration as WhisperModelForFolder
from transformers.models.whisper.modeling_whisper import WhisperDecoder

from modeling_unimoe.configuration_beats import BeatsConfig
from modeling_unimoe.modeling_beats import BeatsModel

from .official_layout import EIGHT_EXPERT_FILES, VARIANTS
from .official_loader import SourcePaths
from .tiny_checkpoint import TINY_AUDIO, TINY_AUDIO_QFORMER, TINY_SPEECH, TINY_VISION, tiny_sentencepiece_model

# Folder names of the released repositories, per variant: (base, delta).
FOLDERS = {
    "speech": ("Uni-MoE-speech-base", "Uni-MoE-speech-e2"),
    "interval": ("Uni-MoE-speech-base-interval", "Uni-MoE-speech-v1.5"),
    "audio": ("Uni-MoE-audio-base", "Uni-MoE-audio-e2"),
    "8e": ("Uni-MoE-speech-base", "Uni-MoE-v2-e2"),
}
EXPERTS_FOLDER = "Uni-MoE-v2-Experts"
CLIP_FOLDER, WHISPER_FOLDER, BEATS_FILE = "clip-vit-large-patch14-336", "whisper-small", "BEATs_iter3_plus_AS2M.pt"
# A tiny official BEATs `cfg` (two layers, so the shared relative-position table has a copy).
TINY_BEATS_CFG = {
    **TINY_AUDIO,
    "input_patch_size": 16,
    "encoder_layers": 2,
    "deep_norm": True,
    "relative_position_embedding": True,
    "gru_rel_pos": True,
    "layer_norm_first": False,
    "finetuned_model": False,
}


@dataclass(frozen=True)
class SyntheticDims:
    """Language-model sizes of a synthetic checkpoint (the released 7B: 32000/4096/11008/32/32)."""

    vocab_size: int = 400
    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_experts: int = 4
    lora_r: int = 2
    lora_alpha: int = 4
    query_tokens: int = 5


class _Random:
    """Seeded random tensors: weights ~ N(0, 0.1²), norm weights ~ 1 + N(0, 0.1²)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, shape: tuple[int, ...], *, norm: bool = False, dtype=torch.float32) -> torch.Tensor:
        values = torch.randn(shape, generator=self.generator) * 0.1
        return (values + 1.0 if norm else values).to(dtype)


def moe_layer_indices(variant: str, num_layers: int) -> list[int]:
    step = 1 if VARIANTS[variant].moe_layers == "all" else 2
    return list(range(0, num_layers, step))


# ------------------------------------------------------------------------------- configs


def official_config(variant: str, dims: SyntheticDims) -> dict:
    """A stage-3 `config.json` as the official training writes it (absolute paths included)."""
    spec = VARIANTS[variant]
    config = {
        "_name_or_path": f"/path/to/{FOLDERS[variant][0]}",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama" if spec.eight_experts else "llava",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": dims.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": dims.intermediate_size,
        "max_position_embeddings": 4096,
        "num_attention_heads": dims.num_attention_heads,
        "num_hidden_layers": dims.num_hidden_layers,
        "num_key_value_heads": dims.num_attention_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.31.0",
        "use_cache": True,
        "vocab_size": dims.vocab_size,
        "moe": True,
        "num_experts": 8 if spec.eight_experts else dims.num_experts,
        "num_experts_per_tok": 2,
        "freeze_mm_mlp_adapter": False,
        "image_aspect_ratio": "square" if variant == "interval" else "pad",
        "mm_hidden_size": TINY_VISION["hidden_size"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": f"/path/to/{CLIP_FOLDER}",
        "tune_mm_mlp_adapter": True,
        "mm_audio_select_layer": 0,
        "mm_audio_select_feature": "patch",
        "mm_query_tokens": True,
        "query_tokens_size": dims.query_tokens,
        "local_files_only": True,
    }
    if spec.sound == "speech":
        config |= {
            "mm_audio_tower": f"/path/to/{WHISPER_FOLDER}",
            "mm_audio_hidden_size": TINY_SPEECH["d_model"],
            "language": "English",
            "task": "transcribe",
        }
        if variant == "interval":
            config["audio_projector_type"] = "linear"
    else:
        config |= {
            "mm_audio_tower": f"/path/to/{BEATS_FILE}",
            "mm_audio_hidden_size": TINY_BEATS_CFG["encoder_embed_dim"],
        }
    if spec.eight_experts:
        config |= {
            "moe_type": "dense",
            "ep_size": 8,
            "capacity_factor": 1.5,
            "lora_r": dims.lora_r,
            "lora_alpha": dims.lora_alpha,
            "lora_dropout": 0.05,
            "image_expert_indices": [2, 3, 4, 6],
            "video_expert_indices": [2, 3, 4, 6],
            "audio_expert_indices": [0, 4, 5, 7],
            "use_fm_block": False,
            "use_flash_attn": True,
            "aux_balance_loss": True,
            "aux_balance_loss_coef": 0.01,
            "aux_multimodal_loss": False,
            "aux_kl_loss": False,
        }
    return config


# ------------------------------------------------------------------------------- tensors


def _llm_layer(layer: int, dims: SyntheticDims, moe: bool, rand: _Random) -> Iterator[tuple[str, torch.Tensor]]:
    h, i = dims.hidden_size, dims.intermediate_size
    prefix = f"model.layers.{layer}"
    for proj in ("q", "k", "v", "o"):
        yield f"{prefix}.self_attn.{proj}_proj.weight", rand((h, h))
    head_dim = h // dims.num_attention_heads
    yield f"{prefix}.self_attn.rotary_emb.inv_freq", 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    mlps = [f"{prefix}.mlp.experts.{k}" for k in range(dims.num_experts)] if moe else [f"{prefix}.mlp"]
    if moe:
        yield f"{prefix}.mlp.gate.weight", rand((dims.num_experts, h))
    for mlp in mlps:
        yield f"{mlp}.gate_proj.weight", rand((i, h))
        yield f"{mlp}.up_proj.weight", rand((i, h))
        yield f"{mlp}.down_proj.weight", rand((h, i))
    yield f"{prefix}.input_layernorm.weight", rand((h,), norm=True)
    yield f"{prefix}.post_attention_layernorm.weight", rand((h,), norm=True)


def _speech_aligner(dims: SyntheticDims, rand: _Random, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Official speech aligner keys: Whisper decoder + projector + `model.query_tokens`."""
    decoder = WhisperDecoder(WhisperConfig(**TINY_SPEECH))
    d_model = TINY_SPEECH["d_model"]
    tensors = {
        f"model.mm_audio_aligner.decoder.audio_decoder.{key}": rand(
            tuple(t.shape), norm="layer_norm" in key, dtype=dtype
        )
        for key, t in decoder.state_dict().items()
    }
    tensors["model.mm_audio_aligner.projector.weight"] = rand((dims.hidden_size, d_model), dtype=dtype)
    tensors["model.mm_audio_aligner.projector.bias"] = rand((dims.hidden_size,), dtype=dtype)
    tensors["model.query_tokens"] = rand((1, dims.query_tokens, d_model), dtype=dtype)
    return tensors


def _audio_aligner(dims: SyntheticDims, rand: _Random, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Official audio aligner keys: Q-Former (with 4.31's unused text FFN) + projector + queries."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    config = Blip2QFormerConfig(**TINY_AUDIO_QFORMER)
    prefix = "model.mm_audio_aligner.qformer.qformer."
    tensors = {
        prefix + key: rand(tuple(t.shape), norm="LayerNorm.weight" in key or key == "layernorm.weight", dtype=dtype)
        for key, t in Blip2QFormerModel(config).state_dict().items()
    }
    h, i = config.hidden_size, config.intermediate_size
    for layer in range(config.num_hidden_layers):  # transformers 4.31 also built the text-token FFN
        text_ffn = f"{prefix}encoder.layer.{layer}."
        tensors |= {
            text_ffn + "intermediate.dense.weight": rand((i, h), dtype=dtype),
            text_ffn + "intermediate.dense.bias": rand((i,), dtype=dtype),
            text_ffn + "output.dense.weight": rand((h, i), dtype=dtype),
            text_ffn + "output.dense.bias": rand((h,), dtype=dtype),
            text_ffn + "output.LayerNorm.weight": rand((h,), norm=True, dtype=dtype),
            text_ffn + "output.LayerNorm.bias": rand((h,), dtype=dtype),
        }
    tensors["model.mm_audio_aligner.projector.weight"] = rand((dims.hidden_size, h), dtype=dtype)
    tensors["model.mm_audio_aligner.projector.bias"] = rand((dims.hidden_size,), dtype=dtype)
    tensors["model.mm_audio_aligner.query_tokens"] = rand((1, dims.query_tokens, h), dtype=dtype)
    return tensors


def _projector(dims: SyntheticDims, rand: _Random, prefix: str = "model.mm_projector") -> dict[str, torch.Tensor]:
    h, v = dims.hidden_size, TINY_VISION["hidden_size"]
    return {
        f"{prefix}.0.weight": rand((h, v)),
        f"{prefix}.0.bias": rand((h,)),
        f"{prefix}.2.weight": rand((h, h)),
        f"{prefix}.2.bias": rand((h,)),
    }


def _tower_copies(sound: str, rand: _Random) -> dict[str, torch.Tensor]:
    """A few keys of the encoder copies a base checkpoint carries (the loader never uses them)."""
    copies = {"model.vision_tower.vision_tower.vision_model.post_layernorm.weight": rand((TINY_VISION["hidden_size"],))}
    if sound == "speech":
        d_model = TINY_SPEECH["d_model"]
        copies |= {
            "model.audio_tower.audio_tower.layer_norm.weight": rand((d_model,)),
            "model.audio_tower.encoder.layer_norm.weight": rand((d_model,)),
            "model.audio_tower.decoder.layer_norm.weight": rand((d_model,)),
        }
    else:
        copies["model.audio_tower.audio_tower.layer_norm.weight"] = rand((TINY_BEATS_CFG["embed_dim"],))
    return copies


def _save_sharded(folder: Path, shards: Iterator[dict[str, torch.Tensor]], num_shards: int) -> None:
    """Saves shards as they are generated (one in memory at a time), plus the index."""
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, start=1):
        name = f"pytorch_model-{i:05d}-of-{num_shards:05d}.bin"
        torch.save(shard, folder / name)
        weight_map |= dict.fromkeys(shard, name)
        total += sum(t.numel() * t.element_size() for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


# ------------------------------------------------------------------------------- folders


def write_tokenizer_files(folder: Path, vocab_size: int = 400) -> None:
    """`tokenizer.model` (a tiny sentencepiece BPE in LLaMA's layout) + LLaVA-1.5's tokenizer config."""
    (folder / "tokenizer.model").write_bytes(tiny_sentencepiece_model(vocab_size))
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 2048,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def write_base(folder: Path, variant: str, dims: SyntheticDims, rand: _Random, *, num_shards: int = 2) -> None:
    """The base folder: fp32 shards with the whole official model, config, tokenizer, side files."""
    spec = VARIANTS[variant]
    folder.mkdir(parents=True)
    base_dims = replace(dims, num_experts=4) if spec.eight_experts else dims  # v2 reuses the 4-expert base
    moe = set(moe_layer_indices("speech" if spec.eight_experts else variant, dims.num_hidden_layers))

    def shards() -> Iterator[dict[str, torch.Tensor]]:
        for shard in range(num_shards):
            tensors = {"model.embed_tokens.weight": rand((dims.vocab_size, dims.hidden_size))} if shard == 0 else {}
            for layer in range(dims.num_hidden_layers):
                if layer * num_shards // dims.num_hidden_layers == shard:
                    tensors.update(_llm_layer(layer, base_dims, layer in moe, rand))
            if shard == num_shards - 1:
                tensors["model.norm.weight"] = rand((dims.hidden_size,), norm=True)
                tensors |= _projector(dims, rand)
                tensors |= _speech_aligner(dims, rand) if spec.sound == "speech" else _audio_aligner(dims, rand)
                tensors |= _tower_copies(spec.sound, rand)
                tensors["lm_head.weight"] = rand((dims.vocab_size, dims.hidden_size))
            yield tensors

    _save_sharded(folder, shards(), num_shards)
    base_config = official_config("speech" if spec.eight_experts else variant, base_dims)
    for name in ("config.json", "4config.json") if variant in ("speech", "8e") else ("config.json",):
        (folder / name).write_text(json.dumps(base_config, indent=2))
    if variant in ("speech", "8e"):
        (folder / "8config.json").write_text(json.dumps(official_config("8e", dims), indent=2))
    generation = {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "max_length": 4096,
        "temperature": 0.9,
        "top_p": 0.6,
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    torch.save(_projector(dims, rand), folder / "mm_projector.bin")
    torch.save(
        _speech_aligner(dims, rand) if spec.sound == "speech" else _audio_aligner(dims, rand),
        folder / "mm_audio_aligner.bin",
    )
    write_tokenizer_files(folder, dims.vocab_size)


def _lora_pair(rand: _Random, out_features: int, in_features: int, r: int, dtype=torch.float32):
    # B is random, not zero as at initialisation: a trained adapter, so merging shows.
    return rand((r, in_features), dtype=dtype), rand((out_features, r), dtype=dtype)


def _adapter(variant: str, dims: SyntheticDims, rand: _Random) -> tuple[dict, dict[str, torch.Tensor]]:
    """peft 0.4 `adapter_model.bin` (no adapter name in keys) and its `adapter_config.json`."""
    spec = VARIANTS[variant]
    h, i, r = dims.hidden_size, dims.intermediate_size, dims.lora_r
    moe = set(moe_layer_indices(variant, dims.num_hidden_layers))
    modules: dict[str, tuple[int, int]] = {}
    for layer in range(dims.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        modules |= {f"{prefix}.self_attn.{p}_proj": (h, h) for p in ("q", "k", "v", "o")}
        if spec.eight_experts:
            continue  # DeepSpeed experts and routers carry their own parameters
        mlps = [f"{prefix}.mlp.experts.{k}" for k in range(dims.num_experts)] if layer in moe else [f"{prefix}.mlp"]
        for mlp in mlps:
            modules |= {f"{mlp}.gate_proj": (i, h), f"{mlp}.up_proj": (i, h), f"{mlp}.down_proj": (h, i)}
        if layer in moe and spec.moe_layers == "even":  # keyword "mlp.gate." leaves the router in
            modules[f"{prefix}.mlp.gate"] = (dims.num_experts, h)
    tensors = {}
    for module, (out_features, in_features) in modules.items():
        a, b = _lora_pair(rand, out_features, in_features, r)
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
    config = {
        "base_model_name_or_path": f"/path/to/{FOLDERS[variant][0]}",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "lora_alpha": dims.lora_alpha,
        "lora_dropout": 0.05,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "revision": None,
        "target_modules": sorted(modules),
        "task_type": "CAUSAL_LM",
    }
    return config, tensors


def write_delta(folder: Path, variant: str, dims: SyntheticDims, rand: _Random) -> None:
    """The stage-3 folder: config, peft adapter and the side files of `safe_save_all_for_hf_trainer`."""
    spec = VARIANTS[variant]
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(official_config(variant, dims), indent=2))
    adapter_config, adapter = _adapter(variant, dims, rand)
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    torch.save(adapter, folder / "adapter_model.bin")
    torch.save(_projector(dims, rand, prefix="base_model.model.model.mm_projector"), folder / "non_lora_trainables.bin")
    aligner_dtype = torch.bfloat16 if spec.sound == "speech" else torch.float32
    aligner = (
        _speech_aligner(dims, rand, aligner_dtype)
        if spec.sound == "speech"
        else _audio_aligner(dims, rand, aligner_dtype)
    )
    torch.save(aligner, folder / "mm_audio_aligner.bin")
    gates = {}
    for layer in moe_layer_indices(variant, dims.num_hidden_layers):
        if spec.eight_experts:
            gates[f"model.layers.{layer}.mlp.deepspeed_moe.gate.wg.weight"] = rand((8, dims.hidden_size))
            continue
        gates[f"model.layers.{layer}.mlp.gate.weight"] = rand((dims.num_experts, dims.hidden_size))
        if spec.moe_layers == "even":  # the router's own LoRA is saved beside it
            a, b = _lora_pair(rand, dims.num_experts, dims.hidden_size, dims.lora_r)
            gates[f"model.layers.{layer}.mlp.gate.lora_A.default.weight"] = a
            gates[f"model.layers.{layer}.mlp.gate.lora_B.default.weight"] = b
    torch.save(gates, folder / "mlp_gates.bin")
    if spec.eight_experts:
        _write_expert_lora(folder, dims, rand)
    if variant == "audio":
        torch.save(_projector(dims, rand), folder / "mm_projector.bin")
    # Not weights: must never be unpickled (weights_only would refuse it anyway).
    (folder / "training_args.bin").write_bytes(pickle.dumps(argparse.Namespace(learning_rate=4e-5)))
    (folder / "latest").write_text("global_step1000")
    write_tokenizer_files(folder, dims.vocab_size)


def _write_expert_lora(folder: Path, dims: SyntheticDims, rand: _Random) -> None:
    """`{k}_mlp_experts.bin`: expert k's LoRA, saved by the rank that held it (local index 0)."""
    h, i, r = dims.hidden_size, dims.intermediate_size, dims.lora_r
    for expert in range(8):
        tensors = {}
        for layer in range(dims.num_hidden_layers):
            prefix = f"model.layers.{layer}.mlp.deepspeed_moe.experts.deepspeed_experts.0"
            for proj, (out_features, in_features) in {"gate": (i, h), "up": (i, h), "down": (h, i)}.items():
                a, b = _lora_pair(rand, out_features, in_features, r, dtype=torch.bfloat16)
                tensors[f"{prefix}.{proj}_proj_lora_A.weight"] = a
                tensors[f"{prefix}.{proj}_proj_lora_B.weight"] = b
        torch.save(tensors, folder / f"{expert}_mlp_experts.bin")


def write_experts(folder: Path, dims: SyntheticDims, rand: _Random) -> None:
    """`Uni-MoE-v2-Experts`: one dense LLaMA MLP per file, every layer."""
    folder.mkdir(parents=True)
    h, i = dims.hidden_size, dims.intermediate_size
    for name in dict.fromkeys(EIGHT_EXPERT_FILES):
        tensors = {}
        for layer in range(dims.num_hidden_layers):
            tensors[f"model.layers.{layer}.mlp.gate_proj.weight"] = rand((i, h))
            tensors[f"model.layers.{layer}.mlp.up_proj.weight"] = rand((i, h))
            tensors[f"model.layers.{layer}.mlp.down_proj.weight"] = rand((h, i))
        torch.save(tensors, folder / f"{name}.bin")


def write_clip(folder: Path) -> None:
    """A tiny `openai/clip-vit-large-patch14-336`: full CLIPModel pickle (old transformers keys)."""
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    config = CLIPConfig(text_config=text, vision_config=TINY_VISION, projection_dim=TINY_VISION["projection_dim"])
    model = CLIPModel(config)
    state = dict(model.state_dict())
    num_positions = (TINY_VISION["image_size"] // TINY_VISION["patch_size"]) ** 2 + 1
    state["vision_model.embeddings.position_ids"] = torch.arange(num_positions)[None]
    state["text_model.embeddings.position_ids"] = torch.arange(config.text_config.max_position_embeddings)[None]
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    torch.save(state, folder / "pytorch_model.bin")
    size = TINY_VISION["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        folder
    )


def write_whisper(folder: Path) -> None:
    """A tiny `openai/whisper-small` as the Hub has it (safetensors, config, feature extractor)."""
    WhisperModelForFolder(WhisperConfig(**TINY_SPEECH)).save_pretrained(folder)
    WhisperFeatureExtractor().save_pretrained(folder)


def write_beats(path: Path, rand: _Random) -> None:
    """A tiny official BEATs file: `{"cfg": dict, "model": state_dict}`, the shared relative
    position table stored under every layer."""
    model = BeatsModel(BeatsConfig.from_official_cfg(TINY_BEATS_CFG))
    state = {key: rand(tuple(t.shape), norm="norm.weight" in key) for key, t in model.state_dict().items()}
    table = "encoder.layers.{}.self_attn.relative_attention_bias.weight"
    for layer in range(1, TINY_BEATS_CFG["encoder_layers"]):
        state[table.format(layer)] = state[table.format(0)].clone()
    torch.save({"cfg": dict(TINY_BEATS_CFG), "model": state}, path)


def write_official_checkpoint(
    root: str | Path, variant: str, *, dims: SyntheticDims | None = None, seed: int = 0, base_shards: int = 2
) -> SourcePaths:
    """Writes every input of one variant under `root` and returns them as `SourcePaths`."""
    root, dims, rand = Path(root), dims or SyntheticDims(), _Random(seed)
    torch.manual_seed(seed)  # the encoders' random init
    spec = VARIANTS[variant]
    base, delta = (root / name for name in FOLDERS[variant])
    write_base(base, variant, dims, rand, num_shards=base_shards)
    write_delta(delta, variant, dims, rand)
    paths = {"base": base, "delta": delta, "clip": root / CLIP_FOLDER}
    write_clip(paths["clip"])
    if spec.eight_experts:
        paths["experts"] = root / EXPERTS_FOLDER
        write_experts(paths["experts"], dims, rand)
    if spec.sound == "speech":
        paths["whisper"] = root / WHISPER_FOLDER
        write_whisper(paths["whisper"])
    else:
        paths["beats"] = root / BEATS_FILE
        write_beats(paths["beats"], rand)
    return SourcePaths(**paths)
