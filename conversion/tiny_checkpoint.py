"""Tiny random Uni-MoE checkpoints, like the Hub's `tiny-random-*` test models.

    unimoe-tiny-checkpoint DIR [--no-vision] [--no-speech] [--no-audio] [--seed N] [--max-shard-size SIZE]

writes a Hub-ready folder that `AutoModel.from_pretrained(DIR, trust_remote_code=True)`,
`AutoProcessor.from_pretrained(DIR, trust_remote_code=True)` and
`pipeline("any-to-text", model=DIR, trust_remote_code=True)` load: a random model with every
encoder (unless left out), its remote code (pipeline included, `custom_pipelines` in config.json),
`generation_config.json`, a model card, a real (tiny) sentencepiece LLaMA tokenizer with the
placeholder tokens (plus its `tokenizer.model`) and a `UniMoeProcessor` whose token counts match
the tiny model. `tiny_config()` is the one tiny-config factory shared by tests, docs and examples.
"""

import argparse
import functools
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from modeling_unimoe import UniMoeConfig, UniMoeForConditionalGeneration, UniMoeProcessor

PLACEHOLDER_TOKENS = ("<image>", "<video>", "<speech>", "<audio>")

# Text the tiny tokenizer is trained on: the chat template's words plus plain English, so
# prompts tokenise into a handful of pieces rather than bytes.
_TOKENIZER_CORPUS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: A red circle on the left.",
    "USER: What does the speaker say? ASSISTANT: one two three four five six seven eight nine zero",
    "Describe the video. The blue square moves up, down, left and right.",
    "What sound is this? A high tone, a low tone, a chord and a burst of noise.",
    "The quick brown fox jumps over the lazy dog. 0123456789 yes no colour shape count",
)


# Tiny encoders. They keep the released input formats (CLIP patch 14, Whisper's 80 mel bins ×
# 3000 frames per 30-s chunk, BEATs' 128-bin fbank) so real processors feed them, but are a few
# units wide: 28-px images → 2×2 = 4 patches.
TINY_VISION = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
    projection_dim=16,
)
TINY_SPEECH = dict(
    d_model=16,
    encoder_layers=1,
    encoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_layers=1,
    decoder_attention_heads=2,
    decoder_ffn_dim=32,
    num_mel_bins=80,
    max_source_positions=1500,  # = 3000 mel frames / 2: one 30-s chunk
    max_target_positions=64,
    vocab_size=64,  # the aligner's decoder never embeds tokens
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)
TINY_AUDIO = dict(  # BEATs, official `cfg` names
    embed_dim=16,
    encoder_embed_dim=16,
    encoder_layers=1,
    encoder_attention_heads=2,
    encoder_ffn_embed_dim=32,
    encoder_layerdrop=0.0,
    conv_pos=16,
    conv_pos_groups=2,
    num_buckets=16,
    max_distance=32,
)
TINY_AUDIO_QFORMER = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    encoder_hidden_size=16,
)
TINY_CONNECTORS = dict(video_num_frames=4, speech_query_tokens=5, audio_query_tokens=3)


def tiny_config(
    *,
    vision: bool = True,
    speech: bool = True,
    audio: bool = True,
    vocab_size: int = 400,
    **overrides,
) -> UniMoeConfig:
    """A Uni-MoE config small enough for unit tests (hidden 32, 2 layers, 4 experts, top-2).

    `vocab_size` matches the tiny tokenizer; placeholder ids follow it, as they follow the
    32000-token vocabulary of the released model. Media token counts: image 4, video 4 (4 frames,
    mean), speech 5 per chunk, audio 3 per chunk. `overrides` go to `UniMoeConfig` when they
    are its fields (e.g. `video_pooling="concat"`, `speech_query_tokens=50`, a whole
    `vision_config`), else to the text config (e.g. `num_hidden_layers=3`).
    """
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        num_experts=4,
        num_experts_per_tok=2,
    )
    kwargs = dict(
        text_config=text_config,
        vision_config=dict(TINY_VISION) if vision else None,
        speech_config=dict(TINY_SPEECH) if speech else None,
        audio_config=dict(TINY_AUDIO) if audio else None,
        audio_qformer_config=dict(TINY_AUDIO_QFORMER) if audio else None,
        image_token_id=vocab_size,
        video_token_id=vocab_size + 1,
        speech_token_id=vocab_size + 2,
        audio_token_id=vocab_size + 3,
        **TINY_CONNECTORS,
    )
    for key, value in overrides.items():
        (kwargs if key in UniMoeConfig.__dataclass_fields__ else text_config)[key] = value
    return UniMoeConfig(**kwargs)


@functools.cache
def tiny_sentencepiece_model(
    vocab_size: int = 400, corpus: Sequence[str] | None = None, max_piece_length: int = 16
) -> bytes:
    """The serialised tiny sentencepiece BPE model (LLaMA's layout: unk 0, bos 1, eos 2, byte
    fallback, dummy prefix, no whitespace folding), trained on `corpus` (default: a few
    sentences covering the chat template and the test prompts). Deterministic: one training thread."""
    import sentencepiece as spm

    lines = list(_TOKENIZER_CORPUS if corpus is None else corpus)
    with tempfile.TemporaryDirectory() as tmp:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines * 20),
            model_prefix=str(Path(tmp) / "tokenizer"),
            vocab_size=vocab_size,
            model_type="bpe",
            byte_fallback=True,
            split_digits=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            hard_vocab_limit=False,
            minloglevel=2,
            num_threads=1,
            max_sentencepiece_length=max_piece_length,
        )
        return (Path(tmp) / "tokenizer.model").read_bytes()


def build_tiny_tokenizer(vocab_size: int = 400, corpus: Sequence[str] | None = None, max_piece_length: int = 16):
    """The tiny sentencepiece model (`tiny_sentencepiece_model`) as a `transformers` LLaMA
    tokenizer: BOS added, as LLaMA's, placeholder tokens `<image> <video> <speech> <audio>` as
    added special tokens (ids `vocab_size`..`vocab_size + 3`), pad = unk = 0 as the official model."""
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        corpus = None if corpus is None else tuple(corpus)  # hashable: the model is cached
        model = tiny_sentencepiece_model(vocab_size, corpus, max_piece_length)
        (Path(tmp) / "tokenizer.model").write_bytes(model)
        tokenizer = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True)
    tokenizer.add_special_tokens({"additional_special_tokens": list(PLACEHOLDER_TOKENS)})
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _first_attr(config, names: tuple[str, ...]):
    for name in names:
        value = getattr(config, name, None) if config is not None else None
        if value is not None:
            return value
    return None


def tiny_processor_counts(config: UniMoeConfig | None = None) -> dict:
    """Processor settings matching a (tiny) model config: CLIP input size and image tokens from
    `vision_config` (image_size, patch_size), query tokens per chunk from the speech/audio
    configs when they carry them, frames per video from `video_num_frames`; otherwise the tiny
    defaults (28 px -> 4 tokens, 4 per chunk, the processor's 8 frames)."""
    vision = getattr(config, "vision_config", None)
    image_size = _first_attr(vision, ("image_size",)) or 28
    patch_size = _first_attr(vision, ("patch_size",)) or 14
    query_names = ("num_query_tokens", "query_tokens_size", "num_queries")
    speech_queries = _first_attr(getattr(config, "speech_config", None), query_names)
    audio_queries = _first_attr(getattr(config, "audio_config", None), query_names)
    frames = {} if config is None else {"video_num_frames": config.video_num_frames}
    return {
        **frames,
        "image_size": image_size,
        "image_seq_length": (image_size // patch_size) ** 2,
        "video_seq_length": (image_size // patch_size) ** 2,
        "speech_tokens_per_chunk": speech_queries or _first_attr(config, ("speech_query_tokens",)) or 4,
        "audio_tokens_per_chunk": audio_queries or _first_attr(config, ("audio_query_tokens",)) or 4,
    }


def build_tiny_processor(config: UniMoeConfig | None = None, tokenizer=None, **overrides) -> UniMoeProcessor:
    """A `UniMoeProcessor` for the tiny model: tiny tokenizer, CLIP at the tiny image size,
    Whisper and BEATs extractors as released; counts from `tiny_processor_counts(config)`,
    overridable by keyword (any `UniMoeProcessor` argument, plus `image_size`)."""
    from transformers import CLIPImageProcessorPil

    settings = {**tiny_processor_counts(config), **overrides}
    image_size = settings.pop("image_size")
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return UniMoeProcessor(image_processor=image_processor, tokenizer=tokenizer or build_tiny_tokenizer(), **settings)


def write_tiny_checkpoint(
    directory: str | Path,
    *,
    vision: bool = True,
    speech: bool = True,
    audio: bool = True,
    seed: int = 0,
    max_shard_size: int | str = "50GB",
    **processor_overrides,
) -> Path:
    """Writes the Hub folder of a tiny random model to `directory`: what `save_pretrained` of the
    model and the processor write (config with `auto_map` and `custom_pipelines`, remote code,
    safetensors, `max_shard_size` giving shards + index, `generation_config.json`, README.md model
    card, tokenizer files, image/speech/audio extractors, `chat_template.jinja`), plus
    `tokenizer.model`. Processor token counts follow the model config (`tiny_processor_counts`)
    unless given in `processor_overrides`."""
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    if len(tokenizer) != 400 + len(PLACEHOLDER_TOKENS):
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, expected 404")
    torch.manual_seed(seed)
    config = tiny_config(vision=vision, speech=speech, audio=audio)
    model = UniMoeForConditionalGeneration(config)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    processor = build_tiny_processor(config, tokenizer=tokenizer, **processor_overrides)
    processor.save_pretrained(directory)
    # The sentencepiece model itself, for tools (and tests) that read it directly.
    (directory / "tokenizer.model").write_bytes(tiny_sentencepiece_model())
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="folder to write (created if missing)")
    parser.add_argument("--no-vision", action="store_true", help="leave out the CLIP image/video encoder")
    parser.add_argument("--no-speech", action="store_true", help="leave out the Whisper speech encoder")
    parser.add_argument("--no-audio", action="store_true", help="leave out the BEATs audio encoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", default="50GB", help='e.g. "200KB" for several safetensors shards + index')
    args = parser.parse_args(argv)
    path = write_tiny_checkpoint(
        args.directory,
        vision=not args.no_vision,
        speech=not args.no_speech,
        audio=not args.no_audio,
        seed=args.seed,
        max_shard_size=args.max_shard_size,
    )
    print(f"wrote a tiny random Uni-MoE checkpoint to {path}")


if __name__ == "__main__":
    main()
