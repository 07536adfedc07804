"""The demo's tiny Uni-MoE: its tokenizer, config and processor.

Sized to train in minutes on two CPU cores yet learn the synthetic task: a 2-layer, 128-wide
LLaMA with 4 experts (top-2) per layer; CLIP at 28 px with 14-px patches (4 tokens per image,
one per quadrant); a 2-layer Whisper reading 2-second windows; a 1-layer BEATs with a 2-layer
Q-Former, also on 2-second windows. The released model reads 30-second windows; the demo's
clips are under 1.5 s, so its feature extractors are set to 2 s (`chunk_length=2`) and the
Whisper encoder to 100 positions (= 200 mel frames): 15 times less padding to encode.
Videos keep every frame's tokens (`video_pooling="concat"`): the official mean over frames
cannot tell which way something moves. The chat template keeps the official Vicuna-v1 layout
with a one-sentence system prompt (`DEMO_SYSTEM_PROMPT`): the official one is 29 of the demo's
~60 tokens per sample.
"""

from modeling_unimoe import UniMoeConfig, UniMoeProcessor
from modeling_unimoe.feature_extraction_unimoe import UniMoeBeatsFeatureExtractor
from modeling_unimoe.processing_unimoe import CHAT_TEMPLATE, DEFAULT_SYSTEM_PROMPT
from unimoe_conversion.tiny_checkpoint import build_tiny_tokenizer

from .synthetic_task import AUDIO_SLOTS, QUADRANT_WORDS, SPEECH_SLOTS, VIDEO_FRAMES, text_corpus

DEMO_SYSTEM_PROMPT = "Answer the user's questions."
WINDOW_SECONDS = 2  # speech and audio feature windows (the released model: 30)
IMAGE_SIZE, PATCH_SIZE = 28, 14  # 2 x 2 patches: one per quadrant
SPEECH_QUERIES, AUDIO_QUERIES = SPEECH_SLOTS, AUDIO_SLOTS

TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    num_experts=4,
    num_experts_per_tok=2,
    router_aux_loss_coef=0.01,
)
VISION = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    projection_dim=64,
)
SPEECH = dict(
    d_model=64,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_layers=1,
    decoder_attention_heads=4,
    decoder_ffn_dim=128,
    num_mel_bins=80,
    max_source_positions=WINDOW_SECONDS * 50,  # 100 mel frames per second, halved by the conv stride
    max_target_positions=16,
    vocab_size=16,  # the aligner's decoder never embeds tokens
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)
AUDIO = dict(  # BEATs, official `cfg` names
    embed_dim=64,
    encoder_embed_dim=64,
    encoder_layers=1,
    encoder_attention_heads=4,
    encoder_ffn_embed_dim=128,
    encoder_layerdrop=0.0,
    conv_pos=16,
    conv_pos_groups=4,
    num_buckets=32,
    max_distance=64,
)
AUDIO_QFORMER = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, encoder_hidden_size=64
)


def train_tokenizer(corpus: list[str] | None = None, vocab_size: int = 800):
    """The tiny-checkpoint tokenizer recipe (LLaMA-layout sentencepiece BPE, placeholders after
    the vocabulary) trained on `corpus` (default: the synthetic task's words) plus the chat
    template's words, with pieces long enough for every slot word to be one token.

    Raises:
        ValueError: a slot word is not one token (`vocab_size` too small).
    """
    lines = [*(corpus if corpus is not None else text_corpus()), DEMO_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPT]
    lines.append("USER: ASSISTANT:")
    tokenizer = build_tiny_tokenizer(vocab_size, lines, max_piece_length=24)  # "▁yellowtrianglenw" is one piece
    split = [word for word in QUADRANT_WORDS if len(tokenizer.tokenize(" " + word)) != 1]
    if split:
        raise ValueError(f"slot words {split} are not single tokens with vocab_size={vocab_size}.")
    return tokenizer


def demo_config(vocab_size: int, **text_overrides) -> UniMoeConfig:
    """The demo model's config; `vocab_size` is the tokenizer's (placeholders follow it)."""
    return UniMoeConfig(
        text_config={**TEXT, "vocab_size": vocab_size, **text_overrides},
        vision_config=dict(VISION),
        speech_config=dict(SPEECH),
        audio_config=dict(AUDIO),
        audio_qformer_config=dict(AUDIO_QFORMER),
        image_token_id=vocab_size,
        video_token_id=vocab_size + 1,
        speech_token_id=vocab_size + 2,
        audio_token_id=vocab_size + 3,
        video_num_frames=VIDEO_FRAMES,
        video_pooling="concat",
        speech_query_tokens=SPEECH_QUERIES,
        audio_query_tokens=AUDIO_QUERIES,
        speech_max_chunks=1,
        audio_max_chunks=1,
    )


def demo_processor(tokenizer, config: UniMoeConfig) -> UniMoeProcessor:
    """The processor matching `demo_config`: 28-px CLIP input, 2-second Whisper and BEATs windows."""
    from transformers import CLIPImageProcessorPil, WhisperFeatureExtractor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return UniMoeProcessor(
        chat_template=CHAT_TEMPLATE.replace(DEFAULT_SYSTEM_PROMPT, DEMO_SYSTEM_PROMPT),
        image_processor=image_processor,
        feature_extractor=WhisperFeatureExtractor(chunk_length=WINDOW_SECONDS),
        audio_feature_extractor=UniMoeBeatsFeatureExtractor(chunk_length=WINDOW_SECONDS, max_chunks=1),
        tokenizer=tokenizer,
        image_seq_length=config.num_media_tokens("image"),
        video_num_frames=config.video_num_frames,
        video_seq_length=config.num_media_tokens("video"),
        speech_tokens_per_chunk=config.speech_query_tokens,
        audio_tokens_per_chunk=config.audio_query_tokens,
        max_speech_chunks=config.speech_max_chunks,
        max_audio_chunks=config.audio_max_chunks,
    )


__all__ = ["DEMO_SYSTEM_PROMPT", "demo_config", "demo_processor", "train_tokenizer"]
