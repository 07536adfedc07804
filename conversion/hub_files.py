"""The non-weight files of a converted checkpoint: tokenizer/processor, generation config, model card.

`save_processor` writes a `UniMoeProcessor` (tokenizer with the placeholder tokens, CLIP image
processor with centre crop, Whisper and BEATs feature extractors, Vicuna-v1 chat template) when
`modeling_unimoe` provides one, and otherwise the tokenizer (with the chat template) and the
image processor (`preprocessor_config.json`) as stand-alone files.
"""

import json
import shutil
from pathlib import Path

from transformers import GenerationConfig, LlamaTokenizer, PreTrainedTokenizerBase, WhisperFeatureExtractor

from .official_layout import ConversionError, Variant

PLACEHOLDERS = {"image": "<image>", "video": "<video>", "speech": "<speech>", "audio": "<audio>"}

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# The official `vicuna_v1` conversation: "{system} USER: {q} ASSISTANT: {a}</s>USER: ...";
# the media placeholders of a user turn come first, one per line (image, sound, video).
VICUNA_V1_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}"
    "{%- set messages = messages[1:] -%}{%- else -%}{%- set system = '" + VICUNA_SYSTEM + "' -%}{%- endif -%}"
    "{{- system ~ ' ' -}}"
    "{%- for message in messages -%}"
    "{%- set content = message['content'] -%}"
    "{%- if content is not string -%}{%- set parts = namespace(media='', text='') -%}"
    "{%- for kind in ['image', 'audio', 'speech', 'video'] -%}{%- for block in content if block['type'] == kind -%}"
    "{%- set parts.media = parts.media ~ '<' ~ kind ~ '>\\n' -%}{%- endfor -%}{%- endfor -%}"
    "{%- for block in content if block['type'] == 'text' -%}{%- set parts.text = parts.text ~ block['text'] -%}"
    "{%- endfor -%}{%- set content = parts.media ~ parts.text -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' ~ content ~ ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' ~ content ~ '</s>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# transformers 4.31 `GenerationConfig` defaults the official scripts ran with (5.x leaves
# top_k/top_p unset), before the base folder's generation_config.json and the script settings.
OFFICIAL_GENERATION_DEFAULTS = {"top_k": 50, "top_p": 1.0, "num_beams": 1, "repetition_penalty": 1.0}
SAMPLING_KEYS = ("top_k", "top_p", "temperature", "num_beams", "repetition_penalty", "typical_p", "length_penalty")


def load_tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    """The official LLaMA tokenizer plus the placeholder tokens `<image> <video> <speech> <audio>`
    (added special tokens after the vocabulary, ids 32000-32003 for the released models);
    padding with `<unk>` (id 0) on the right, as the official code.

    Loaded through its class, not `AutoTokenizer`: that would parse the folder's official
    `config.json` (`model_type: llava`) as a transformers LLaVA config."""
    tokenizer = LlamaTokenizer.from_pretrained(tokenizer_dir)
    missing = [token for token in PLACEHOLDERS.values() if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


def placeholder_token_ids(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> dict[str, int]:
    """`{image,video,speech,audio}_token_id` for the config; they must lie beyond the LM vocabulary."""
    ids = {f"{modality}_token_id": tokenizer.convert_tokens_to_ids(token) for modality, token in PLACEHOLDERS.items()}
    inside = {name: i for name, i in ids.items() if i < vocab_size}
    if inside:
        raise ConversionError(
            f"Placeholder tokens {inside} fall inside the language model's vocabulary (vocab_size={vocab_size}); "
            "the tokenizer already has tokens with these names."
        )
    return ids


def build_generation_config(variant: Variant, base_generation: dict | None, config) -> GenerationConfig:
    """Official decoding defaults: 4.31's defaults, then the base folder's generation_config.json
    sampling fields, then the official inference script's settings (`Variant.generation`)."""
    settings = dict(OFFICIAL_GENERATION_DEFAULTS)
    settings.update({key: value for key, value in (base_generation or {}).items() if key in SAMPLING_KEYS})
    settings.update(variant.generation)
    text_config = config.text_config
    return GenerationConfig(
        bos_token_id=text_config.bos_token_id,
        eos_token_id=text_config.eos_token_id,
        pad_token_id=text_config.pad_token_id,
        **settings,
    )


def _image_processor(clip_dir: Path):
    from transformers import CLIPImageProcessorPil

    # The released models centre-crop (the official `image_aspect_ratio="pad"` path never ran).
    return CLIPImageProcessorPil.from_pretrained(clip_dir, do_center_crop=True)


def save_processor(
    output_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    config,
    *,
    clip_dir: Path,
    whisper_dir: Path | None,
    tokenizer_dir: Path,
) -> None:
    """Writes the processor files of the converted checkpoint (see the module docstring)."""
    image_processor = _image_processor(clip_dir)
    feature_extractor = (
        WhisperFeatureExtractor.from_pretrained(whisper_dir) if whisper_dir else WhisperFeatureExtractor()
    )
    try:
        from modeling_unimoe import UniMoeProcessor
    except ImportError:
        UniMoeProcessor = None
    if UniMoeProcessor is not None:
        counts = {
            "image_seq_length": config.num_media_tokens("image"),
            "video_seq_length": config.num_media_tokens("video"),
            "video_num_frames": config.video_num_frames,
            "speech_tokens_per_chunk": config.speech_query_tokens,
            "audio_tokens_per_chunk": config.audio_query_tokens,
            "max_speech_chunks": config.speech_max_chunks,
            "max_audio_chunks": config.audio_max_chunks,
        }
        feature_extractor = WhisperFeatureExtractor.from_pretrained(whisper_dir) if whisper_dir else None
        processor = UniMoeProcessor(
            image_processor=image_processor, feature_extractor=feature_extractor, tokenizer=tokenizer, **counts
        )
        processor.save_pretrained(output_dir)
    else:
        tokenizer.chat_template = VICUNA_V1_TEMPLATE
        tokenizer.save_pretrained(output_dir)
        image_processor.save_pretrained(output_dir)
    if (tokenizer_dir / "tokenizer.model").is_file():  # the sentencepiece model, for slow-tokenizer users
        shutil.copyfile(tokenizer_dir / "tokenizer.model", output_dir / "tokenizer.model")


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_model_card(
    output_dir: Path,
    variant: Variant,
    *,
    sources: dict[str, str],
    dropped: dict[str, list[str]],
    ignored_files: list[str],
    dtype: str,
    router_lora: str,
) -> None:
    """README.md: what the checkpoint is, where every part comes from, what was left out."""
    source_lines = "\n".join(f"- {role}: `{path}`" for role, path in sources.items())
    dropped_lines = "\n".join(f"- {len(keys)} tensors: {reason}" for reason, keys in sorted(dropped.items()))
    ignored_lines = "\n".join(f"- {line}" for line in ignored_files) or "- none"
    router_note = (
        "the router LoRA of the adapter is merged and then overwritten by `mlp_gates.bin`, as the official "
        "loader does (`--router-lora official`)"
        if router_lora == "official"
        else "the router LoRA is merged on top of `mlp_gates.bin` (`--router-lora merge`, as in training)"
    )
    card = f"""---
library_name: transformers
license: apache-2.0
pipeline_tag: any-to-any
tags:
- uni-moe
- mixture-of-experts
- multimodal
- custom_code
base_model:
{chr(10).join(f"- {repo}" for repo in variant.sources)}
---

# {variant.title}

A self-contained Hugging Face checkpoint of the official Uni-MoE model (arXiv 2405.11273), converted
from the released checkpoints with `unimoe-convert --variant {variant.name}`. Load it with
`AutoModel.from_pretrained(path, trust_remote_code=True)` and `AutoProcessor.from_pretrained(path,
trust_remote_code=True)`.

## Sources

Released repositories: {", ".join(f"[{repo}](https://huggingface.co/{repo})" for repo in variant.sources)},
plus the public encoders `openai/clip-vit-large-patch14-336`, `openai/whisper-small` (speech models)
and Microsoft's `BEATs_iter3_plus_AS2M.pt` (audio model).

{source_lines}

Weights: `{dtype}` safetensors. The official load order is replayed: base, `non_lora_trainables.bin`,
PEFT LoRA merged as `W += (alpha / r) * B @ A`, aligner, `mlp_gates.bin`, encoders. For this variant
{router_note}.

## Decoding defaults

{variant.generation_note} The official chat format is Vicuna v1 (`USER: ... ASSISTANT:`); images are
resized to 336 px and centre-cropped, as the released models ran.

## Left out on purpose

{dropped_lines or "- nothing"}

Files not read:

{ignored_lines}
"""
    (output_dir / "README.md").write_text(card)
