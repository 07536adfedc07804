"""What the released Uni-MoE checkpoints contain and where each tensor goes.

The four released variants, the files of their folders, and one key-mapping function per kind
of input file. A mapping function returns the target parameter name (the Hub model's state-dict
name), a `Drop` with the reason the tensor is deliberately left out, or `None` for a key it does
not know (the converter then fails, naming the key).
"""

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path


class ConversionError(ValueError):
    """The input checkpoints do not fit the official layout or the target model."""


@dataclass(frozen=True)
class Drop:
    """A source tensor deliberately left out of the converted model."""

    reason: str


@dataclass(frozen=True)
class Variant:
    """One released model: how its checkpoints are laid out and how the official scripts ran it.

    Args:
        name: the `--variant` value.
        title: one line for the model card.
        moe_layers: `"all"` or `"even"` (`UniMoeTextConfig.moe_layers`).
        sound: `"speech"` (Whisper encoder + Whisper-decoder aligner) or `"audio"` (BEATs + Q-Former).
        eight_experts: the DeepSpeed 8-expert model (Experts files + per-expert LoRA).
        sources: the released repositories it is converted from (base, [experts,] delta).
        generation: the sampling settings of the official inference script.
        generation_note: which script that is, and what it does differently for images.
    """

    name: str
    title: str
    moe_layers: str
    sound: str
    eight_experts: bool
    sources: tuple[str, ...]
    generation: dict = field(default_factory=dict)
    generation_note: str = ""


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant(
            name="speech",
            title="Uni-MoE 4-expert speech model (MoE-Task2): MoE in every layer, Whisper-small speech",
            moe_layers="all",
            sound="speech",
            eight_experts=False,
            sources=("Uni-MoE/Uni-MoE-speech-base", "Uni-MoE/Uni-MoE-speech-e2"),
            generation={"do_sample": True, "temperature": 0.2, "max_new_tokens": 1024},
            generation_note="`Uni_MoE_speech/inference_all.py`: sampling, temperature 0.2, 1024 new tokens.",
        ),
        Variant(
            name="interval",
            title="Uni-MoE 4-expert speech model v1.5: MoE in even layers, Whisper-small speech",
            moe_layers="even",
            sound="speech",
            eight_experts=False,
            sources=("Uni-MoE/Uni-MoE-speech-base-interval", "Uni-MoE/Uni-MoE-speech-v1.5"),
            generation={"do_sample": True, "temperature": 0.2, "max_new_tokens": 512},
            generation_note=(
                "`demo/demo.py`: sampling, temperature 0.2, 512 new tokens; with an image the demo decodes "
                "greedily (`do_sample=False`)."
            ),
        ),
        Variant(
            name="audio",
            title="Uni-MoE 4-expert audio model (MoE-Task3): MoE in even layers, BEATs general audio",
            moe_layers="even",
            sound="audio",
            eight_experts=False,
            sources=("Uni-MoE/Uni-MoE-audio-base", "Uni-MoE/Uni-MoE-audio-e2"),
            generation={"do_sample": True, "temperature": 0.2, "max_new_tokens": 1024},
            generation_note=(
                "`Uni_MoE_audio/inference_all.py`: sampling, temperature 0.2, 1024 new tokens (the official "
                "audio scripts run in float32)."
            ),
        ),
        Variant(
            name="8e",
            title="Uni-MoE v2 8-expert speech model (DeepSpeed-MoE, per-expert LoRA)",
            moe_layers="all",
            sound="speech",
            eight_experts=True,
            sources=("Uni-MoE/Uni-MoE-speech-base", "Uni-MoE/Uni-MoE-v2-Experts", "Uni-MoE/Uni-MoE-v2-e2"),
            generation={"do_sample": True, "temperature": 0.2, "max_new_tokens": 2048},
            generation_note=(
                "`Uni_MoE_8e/Uni_MoE_speech/inference_new.py`: sampling, temperature 0.2, 2048 new tokens; with "
                "an image it decodes greedily."
            ),
        ),
    )
}

# 8-expert model: global expert id -> the `Uni-MoE-v2-Experts` file its dense MLP comes from
# (experts 2 and 6, and 5 and 7, start from the same file).
EIGHT_EXPERT_FILES = (
    "mlp_audiocap",
    "mlp_basev",
    "mlp_base",
    "mlp_base1",
    "mlp_base4",
    "mlp_base7",
    "mlp_base",
    "mlp_base7",
)

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".h5", ".msgpack", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")

# --------------------------------------------------------------------------- drop reasons

ROTARY = "RoPE inverse frequencies: a buffer recomputed from the config"
VISION_TOWER_COPY = "copy of the CLIP tower: the official loader rebuilds the tower from the CLIP folder"
SPEECH_TOWER_COPY = "copy of the Whisper encoder: the official loader rebuilds it from the Whisper folder"
RANDOM_WHISPER = "random, unused Whisper copy of WhisperAudioTower (it subclasses WhisperModel)"
BEATS_TOWER_COPY = "copy of the BEATs tower: the official loader rebuilds it from the BEATs file"
BASE_4E_MLP = (
    "4-expert MLP of the base: the 8-expert model takes experts from the Experts files, routers from mlp_gates.bin"
)
QFORMER_TEXT_FFN = "Q-Former feed-forward for text tokens: unused (only queries enter the Q-Former)"
NON_LORA_LORA = "LoRA tensor in non_lora_trainables.bin: loaded before PEFT by the official loader, matches no module"
ROUTER_LORA_IN_GATES = "router LoRA kept in mlp_gates.bin: after the official merge it matches no module"
ROUTER_LORA_DUPLICATE = "router LoRA kept in mlp_gates.bin: same adapter as adapter_model.bin, merged from there"
CLIP_TEXT = "CLIP text tower / contrastive head: Uni-MoE reads only CLIP vision hidden states"
POSITION_IDS = "position-id buffer: rebuilt by transformers"
WHISPER_PROJ_OUT = "Whisper ASR output head (tied to the token embedding): unused"
EXPERT_FILE_DENSE = "dense weight in a per-expert LoRA file: the official loader replaces it with the Experts file's"
EXPERTS_NON_MLP = "not an MLP projection: the official expert loader ignores it"
BEATS_SHARED_COPY = "per-layer copy of BEATs' shared relative position table (equal to layer 0's)"

# --------------------------------------------------------------------------- ignored files

BASE_IGNORED = {
    "config.json": "the official loader takes the configuration from the delta (e2) folder",
    "4config.json": "configuration copy (4-expert)",
    "8config.json": "configuration copy (8-expert): the v2 delta folder's config.json is used",
    "mm_projector.bin": "stage-3 training initialisation of the projector; not read by the official inference loader",
    "mm_audio_aligner.bin": "stage-3 training initialisation of the aligner; not read by the official inference loader",
}
DELTA_IGNORED = {
    "training_args.bin": "pickled training arguments, not weights: never unpickled",
    "latest": "DeepSpeed checkpoint tag",
    "mm_projector.bin": "not read by the official loader: the projector comes from non_lora_trainables.bin",
    "trainer_state.json": "training log",
    "global_step*": "DeepSpeed optimizer state",
    **dict.fromkeys(TOKENIZER_FILES, "the official loader reads the tokenizer from the base folder"),
}
ENCODER_IGNORED = {
    "tf_model.h5": "the same weights for TensorFlow",
    "flax_model.msgpack": "the same weights for Flax",
    "pytorch_model.bin": "the same weights as model.safetensors",
}
# Shard indexes: read to find the shards.
INDEX_FILES = {"pytorch_model.bin.index.json", "model.safetensors.index.json"}


@dataclass(frozen=True)
class IgnoredFile:
    path: Path
    reason: str


def classify_folder(folder: Path, used: set[str], known: dict[str, str]) -> list[IgnoredFile]:
    """Checks that every file of `folder` is used or ignored for a known reason.

    Files not in `used` are ignored: with the `known` reason (names or glob patterns), as "not
    read" for non-weight files. A weight file that is neither used nor known raises: the
    converter never silently skips weights.
    """
    ignored, unknown = [], []
    for path in sorted(folder.iterdir()):
        if path.name in used or path.name.startswith("."):
            continue
        reason = next((why for pattern, why in known.items() if fnmatch.fnmatch(path.name, pattern)), None)
        if reason is not None:
            ignored.append(IgnoredFile(path, reason))
        elif path.is_dir():
            ignored.append(IgnoredFile(path, "sub-folder, not read"))
        elif path.name.endswith(WEIGHT_SUFFIXES):
            unknown.append(path.name)
        else:
            ignored.append(IgnoredFile(path, "not a weight file, not read"))
    if unknown:
        raise ConversionError(
            f"{folder} has weight files the official loader does not read and the converter does not know: "
            f"{unknown}. Remove them or check that this is the right folder."
        )
    return ignored


# --------------------------------------------------------------------------- key mapping

_LLM_KEY = re.compile(r"(lm_head|model\.embed_tokens|model\.norm|model\.layers\.\d+)\.")
_LAYER_MLP = re.compile(r"model\.layers\.\d+\.mlp\.")
_QFORMER_TEXT_FFN = re.compile(r"encoder\.layer\.\d+\.(intermediate|output)\.")
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight")
_GATE_8E = re.compile(r"model\.layers\.(\d+)\.mlp\.deepspeed_moe\.gate\.wg\.weight")
_GATE_4E = re.compile(r"model\.layers\.\d+\.mlp\.gate\.weight")
_GATE_LORA = re.compile(r"(?P<module>model\.layers\.\d+\.mlp\.gate)\.lora_(?P<part>[AB])\.default\.weight")
_DENSE_MLP = re.compile(r"model\.layers\.(?P<layer>\d+)\.mlp\.(?P<proj>gate|up|down)_proj\.weight")
_EXPERT_LORA = re.compile(
    r"model\.layers\.(?P<layer>\d+)\.mlp\.deepspeed_moe\.experts\.deepspeed_experts\.\d+\."
    r"(?P<proj>gate|up|down)_proj(?:_lora_(?P<part>[AB]))?\.weight"
)


def strip_peft_prefix(keys: list[str]) -> dict[str, str]:
    """Official side-file key normalisation: drop `base_model.`, then `model.` when keys start
    `model.model.` (as every official loader does). Returns normalised -> original."""
    stripped = {(key[len("base_model.") :] if key.startswith("base_model.") else key): key for key in keys}
    if any(key.startswith("model.model.") for key in stripped):
        stripped = {(key[len("model.") :] if key.startswith("model.") else key): orig for key, orig in stripped.items()}
    return stripped


def map_aligner_key(key: str, variant: Variant) -> str | Drop | None:
    """Official speech/audio aligner and query tokens → `speech_*` / `audio_*` modules."""
    if variant.sound == "speech":
        if key == "model.query_tokens":
            return "model.speech_aligner.query_tokens"
        for prefix, target in (
            ("model.mm_audio_aligner.decoder.audio_decoder.", "model.speech_aligner.decoder."),
            ("model.mm_audio_aligner.projector.", "model.speech_projector."),
        ):
            if key.startswith(prefix):
                return target + key[len(prefix) :]
        return None
    if key == "model.mm_audio_aligner.query_tokens":
        return "model.audio_aligner.query_tokens"
    prefix = "model.mm_audio_aligner.qformer.qformer."
    if key.startswith(prefix):
        rest = key[len(prefix) :]
        return Drop(QFORMER_TEXT_FFN) if _QFORMER_TEXT_FFN.match(rest) else "model.audio_aligner.qformer." + rest
    if key.startswith("model.mm_audio_aligner.projector."):
        return "model.audio_projector." + key[len("model.mm_audio_aligner.projector.") :]
    return None


def map_base_key(key: str, variant: Variant) -> str | Drop | None:
    """A key of the base model's `pytorch_model-*.bin` shards (also used for `non_lora_trainables.bin`)."""
    if key.endswith(".rotary_emb.inv_freq"):
        return Drop(ROTARY)
    if key.startswith("model.vision_tower."):
        return Drop(VISION_TOWER_COPY)
    if key.startswith("model.audio_tower."):
        if variant.sound == "audio":
            return Drop(BEATS_TOWER_COPY)
        return Drop(SPEECH_TOWER_COPY if key.startswith("model.audio_tower.audio_tower.") else RANDOM_WHISPER)
    if variant.eight_experts and _LAYER_MLP.match(key):
        return Drop(BASE_4E_MLP)
    if _LLM_KEY.match(key) or key.startswith("model.mm_projector."):
        return key  # the Hub model keeps the official names of the language model and projector
    return map_aligner_key(key, variant)


def parse_lora_key(key: str) -> tuple[str, str] | None:
    """A normalised adapter key `{module}.lora_{A,B}[.default].weight` (peft 0.4 writes
    `base_model.model.{module}.lora_A.weight`) → (module, "A" | "B")."""
    match = _LORA_KEY.fullmatch(key)
    return (match["module"], match["part"]) if match else None


def map_gates_key(key: str, variant: Variant) -> str | tuple[str, str] | None:
    """A normalised `mlp_gates.bin` key → router target, or (router module, "A" | "B") for its LoRA."""
    if variant.eight_experts:
        match = _GATE_8E.fullmatch(key)
        return f"model.layers.{match[1]}.mlp.gate.weight" if match else None
    if _GATE_4E.fullmatch(key):
        return key
    match = _GATE_LORA.fullmatch(key)
    return (match["module"], match["part"]) if match else None


def map_experts_file_key(key: str, expert: int) -> str | Drop | None:
    """A key of a `Uni-MoE-v2-Experts` file (a dense LLaMA MLP) → expert `expert` of that layer."""
    match = _DENSE_MLP.fullmatch(key)
    if match:
        return f"model.layers.{match['layer']}.mlp.experts.{expert}.{match['proj']}_proj.weight"
    if _LLM_KEY.match(key):
        return Drop(EXPERTS_NON_MLP)
    return None


def map_expert_lora_key(key: str, expert: int) -> str | tuple[str, str] | Drop | None:
    """A normalised `{expert}_mlp_experts.bin` key → (target weight, "A" | "B") for its LoRA."""
    match = _EXPERT_LORA.fullmatch(key)
    if match is None:
        return None
    target = f"model.layers.{match['layer']}.mlp.experts.{expert}.{match['proj']}_proj.weight"
    return (target, match["part"]) if match["part"] else Drop(EXPERT_FILE_DENSE)


def map_clip_key(key: str) -> str | Drop | None:
    """A key of the public CLIP checkpoint (`CLIPModel`) → the vision tower."""
    if key.endswith(".position_ids"):
        return Drop(POSITION_IDS)
    if key.startswith("vision_model."):
        return "model.vision_tower." + key[len("vision_model.") :]
    if key.startswith(("text_model.", "text_projection.", "visual_projection.")) or key == "logit_scale":
        return Drop(CLIP_TEXT)
    return None


def map_whisper_key(key: str) -> str | Drop | None:
    """A key of the public Whisper checkpoint → the speech tower (encoder) or the aligner's decoder
    (the official aligner starts from Whisper's decoder; the aligner file then replaces it)."""
    if key == "proj_out.weight":
        return Drop(WHISPER_PROJ_OUT)
    key = key[len("model.") :] if key.startswith("model.") else key
    if key.startswith("encoder."):
        return "model.speech_tower." + key[len("encoder.") :]
    if key.startswith("decoder."):
        return "model.speech_aligner.decoder." + key[len("decoder.") :]
    return None
