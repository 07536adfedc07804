"""The four modality paths alone: feature shapes, token counts, and each path against a reference
built from other code (hand-run CLIP layers, transformers' `WhisperModel`, an explicit Q-Former
call) on tiny random weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import Blip2QFormerConfig, WhisperFeatureExtractor, WhisperModel

from modeling_unimoe import UniMoeConfig, UniMoeForConditionalGeneration
from unimoe_conversion.tiny_checkpoint import tiny_config

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 30 * SAMPLE_RATE


def build(config: UniMoeConfig) -> UniMoeForConditionalGeneration:
    torch.manual_seed(0)
    return UniMoeForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def model() -> UniMoeForConditionalGeneration:
    return build(tiny_config())


# ---- config: token counts --------------------------------------------------------------------


def test_released_token_counts():
    config = UniMoeConfig()
    assert config.num_media_tokens("image") == 576  # (336 / 14)^2, CLS dropped
    assert config.num_media_tokens("video") == 576  # frames averaged
    assert config.num_media_tokens("speech") == 50
    assert config.num_media_tokens("speech", num_chunks=2) == 100
    assert config.num_media_tokens("speech", num_chunks=20) == 1000
    assert config.audio_config is None and config.audio_qformer_config is None
    with pytest.raises(ValueError, match="no audio encoder"):
        config.num_media_tokens("audio")


def test_token_count_options():
    assert UniMoeConfig(video_pooling="concat").num_media_tokens("video") == 8 * 576
    assert UniMoeConfig(video_pooling="concat", video_num_frames=4).num_media_tokens("video") == 4 * 576
    assert UniMoeConfig(vision_feature_select_strategy="full").num_media_tokens("image") == 577
    config = tiny_config()
    assert [config.num_media_tokens(m) for m in ("image", "video", "speech", "audio")] == [4, 4, 5, 3]
    assert config.num_media_tokens("audio", num_chunks=3) == 9


@pytest.mark.parametrize(
    ("modality", "num_chunks", "message"),
    [
        ("speech", 21, "1 to 20"),
        ("speech", 0, "1 to 20"),
        ("audio", 21, "1 to 20"),
        ("image", 2, "exactly one chunk"),
        ("text", 1, "Unknown modality"),
    ],
)
def test_token_count_errors(modality, num_chunks, message):
    with pytest.raises(ValueError, match=message):
        tiny_config().num_media_tokens(modality, num_chunks)


def test_missing_encoders_have_no_tokens():
    config = tiny_config(vision=False, speech=False, audio=False)
    for modality in ("image", "video", "speech", "audio"):
        with pytest.raises(ValueError, match=f"no {modality} encoder"):
            config.num_media_tokens(modality)


def test_audio_config_brings_blip2_qformer():
    config = UniMoeConfig(audio_config={"encoder_embed_dim": 24, "conv_pos_groups": 2})
    qformer = config.audio_qformer_config
    assert isinstance(qformer, Blip2QFormerConfig)
    # BLIP-2 defaults, reading BEATs-width features.
    assert (qformer.hidden_size, qformer.num_hidden_layers, qformer.cross_attention_frequency) == (768, 12, 2)
    assert qformer.encoder_hidden_size == 24
    assert config.num_media_tokens("audio", num_chunks=2) == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"video_pooling": "max"}, "video_pooling must be one of"),
        ({"vision_feature_select_strategy": "cls"}, "vision_feature_select_strategy must be one of"),
        ({"speech_query_tokens": 0}, "speech_query_tokens must be >= 1"),
        ({"speech_query_tokens": 449}, "max_target_positions=448"),
        ({"vision_feature_layer": -26}, "25 hidden states"),
        (
            {
                "audio_config": {"encoder_embed_dim": 24, "conv_pos_groups": 2},
                "audio_qformer_config": {"encoder_hidden_size": 32},
            },
            "BEATs width",
        ),
        ({"audio_qformer_config": {}}, "audio_config .the BEATs encoder. is None"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        UniMoeConfig(**kwargs)


def test_config_round_trip():
    config = tiny_config(video_pooling="concat")
    again = UniMoeConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert again.audio_qformer_config.encoder_hidden_size == config.audio_config.hidden_size


# ---- image -----------------------------------------------------------------------------------


def reference_image_features(model: UniMoeForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP run layer by layer up to the input of its last layer, CLS dropped, then the
    projector written out: Linear → GELU → Linear."""
    tower = model.model.vision_tower
    hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))
    for layer in tower.encoder.layers[:-1]:
        hidden = layer(hidden, None)
    first, _, second = model.model.mm_projector
    return F.linear(F.gelu(F.linear(hidden[:, 1:], first.weight, first.bias)), second.weight, second.bias)


@pytest.mark.parametrize("num_images", [1, 3])
def test_image_features_match_reference(model, num_images):
    pixel_values = torch.randn(num_images, 3, 28, 28)
    features = model.get_image_features(pixel_values)
    assert features.shape == (num_images, model.config.num_media_tokens("image"), 32)
    torch.testing.assert_close(features, reference_image_features(model, pixel_values))


def test_image_at_released_resolution_gives_576_tokens():
    vision = dict(
        hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=336, patch_size=14
    )
    model = build(tiny_config(vision_config=vision, speech=False, audio=False))
    features = model.get_image_features(torch.randn(2, 3, 336, 336))
    assert features.shape == (2, 576, 32) == (2, model.config.num_media_tokens("image"), 32)


def test_full_strategy_keeps_cls():
    model = build(tiny_config(vision_feature_select_strategy="full", speech=False, audio=False))
    pixel_values = torch.randn(2, 3, 28, 28)
    features = model.get_image_features(pixel_values)
    assert features.shape == (2, 5, 32)
    torch.testing.assert_close(features[:, 1:], reference_image_features(model, pixel_values))


def test_image_shape_error(model):
    with pytest.raises(ValueError, match="pixel_values must be"):
        model.get_image_features(torch.randn(3, 28, 28))


# ---- video -----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [1, 4, 8])
def test_video_is_mean_of_projected_frames(model, num_frames):
    videos = torch.randn(2, num_frames, 3, 28, 28)
    features = model.get_video_features(videos)
    assert features.shape == (2, model.config.num_media_tokens("video"), 32)
    per_frame = torch.stack([reference_image_features(model, video) for video in videos])  # (2, T, 4, 32)
    # Averaged after the projector (official), which differs from projecting averaged CLIP features.
    torch.testing.assert_close(features, per_frame.mean(dim=1))


def test_video_concat_keeps_every_frame():
    model = build(tiny_config(video_pooling="concat", speech=False, audio=False))
    videos = torch.randn(2, 4, 3, 28, 28)
    features = model.get_video_features(videos)
    assert features.shape == (2, 16, 32) == (2, model.config.num_media_tokens("video"), 32)
    torch.testing.assert_close(features[1, 4:8], reference_image_features(model, videos[1, 1:2])[0])


def test_video_shape_error(model):
    with pytest.raises(ValueError, match="pixel_values_videos must be"):
        model.get_video_features(torch.randn(4, 3, 28, 28))


# ---- speech ----------------------------------------------------------------------------------


def whisper_features(seconds: float, seed: int = 0) -> torch.Tensor:
    """Log-mel features of a synthetic clip cut into 30-s chunks, (num_chunks, 80, 3000)."""
    rng = np.random.default_rng(seed)
    wave = rng.standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32) * 0.1
    chunks = [wave[i : i + CHUNK_SAMPLES] for i in range(0, len(wave), CHUNK_SAMPLES)]
    extractor = WhisperFeatureExtractor()
    return extractor(chunks, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


def reference_speech_features(model: UniMoeForConditionalGeneration, input_features: torch.Tensor) -> torch.Tensor:
    """transformers' encoder-decoder `WhisperModel` with our weights, the queries as decoder
    input embeddings (as the official `WhisperAudioTower`), then the projector."""
    whisper = WhisperModel(model.config.speech_config).eval()
    whisper.encoder.load_state_dict(model.model.speech_tower.state_dict())
    whisper.decoder.load_state_dict(model.model.speech_aligner.decoder.state_dict())
    queries = model.model.speech_aligner.query_tokens.expand(len(input_features), -1, -1)
    hidden = whisper(input_features, decoder_inputs_embeds=queries, use_cache=False).last_hidden_state
    return model.model.speech_projector(hidden)


@pytest.mark.parametrize(("seconds", "num_chunks"), [(3.0, 1), (30.0, 1), (35.0, 2), (61.0, 3)])
def test_speech_chunks_and_tokens(model, seconds, num_chunks):
    input_features = whisper_features(seconds)
    assert input_features.shape == (num_chunks, 80, 3000)
    features = model.get_speech_features(input_features)
    assert features.shape == (num_chunks, 5, 32)
    assert features.shape[0] * features.shape[1] == model.config.num_media_tokens("speech", num_chunks)


def test_35s_speech_is_100_tokens_at_released_queries():
    model = build(tiny_config(speech_query_tokens=50, vision=False, audio=False))
    features = model.get_speech_features(whisper_features(35.0))
    assert features.shape == (2, 50, 32)
    assert features.shape[0] * features.shape[1] == 100 == model.config.num_media_tokens("speech", 2)


def test_speech_matches_whisper_model(model):
    input_features = whisper_features(35.0)
    torch.testing.assert_close(
        model.get_speech_features(input_features), reference_speech_features(model, input_features)
    )


def test_speech_aligner_self_attention_is_causal(model):
    """Official: the Whisper decoder keeps its causal mask, so query k never sees queries > k."""
    aligner = model.model.speech_aligner
    encoder_states = torch.randn(1, 1500, 16)
    before = aligner(encoder_states)
    with torch.no_grad():
        aligner.query_tokens[0, 3] += 1.0
    after = aligner(encoder_states)
    with torch.no_grad():
        aligner.query_tokens[0, 3] -= 1.0
    torch.testing.assert_close(after[:, :3], before[:, :3])
    assert not torch.allclose(after[:, 3:], before[:, 3:])


def test_speech_frame_count_error(model):
    with pytest.raises(ValueError, match="3000"):
        model.get_speech_features(torch.randn(1, 80, 2000))


# ---- audio -----------------------------------------------------------------------------------


def fbank_chunks(num_chunks: int, padded_frames: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.randn(num_chunks, 2998, 128)
    mask = torch.zeros(num_chunks, 2998, dtype=torch.bool)
    if padded_frames:
        mask[-1, -padded_frames:] = True
    return features, mask


@pytest.mark.parametrize("num_chunks", [1, 2])
def test_audio_chunks_and_tokens(model, num_chunks):
    features = model.get_audio_features(*fbank_chunks(num_chunks, padded_frames=1000))
    assert features.shape == (num_chunks, 3, 32)
    assert features.shape[0] * features.shape[1] == model.config.num_media_tokens("audio", num_chunks)


def test_audio_matches_explicit_qformer_call(model):
    """BLIP-2's own pattern: expanded queries, Q-Former over all encoder positions with an
    all-ones encoder mask (official), then the projector."""
    features, mask = fbank_chunks(2, padded_frames=700)
    inner = model.model
    encoded = inner.audio_tower(input_features=features, padding_mask=mask).last_hidden_state
    queries = inner.audio_aligner.query_tokens.expand(2, -1, -1)
    hidden = inner.audio_aligner.qformer(
        query_embeds=queries,
        encoder_hidden_states=encoded,
        encoder_attention_mask=torch.ones(encoded.shape[:2], dtype=torch.long),
    ).last_hidden_state
    torch.testing.assert_close(model.get_audio_features(features, mask), inner.audio_projector(hidden))


def test_audio_padding_mask_reaches_beats(model):
    features, mask = fbank_chunks(1, padded_frames=1500)
    assert not torch.allclose(model.get_audio_features(features, mask), model.get_audio_features(features))


def test_audio_mask_shape_error(model):
    features, _ = fbank_chunks(2)
    with pytest.raises(ValueError, match="audio_padding_mask must be"):
        model.get_audio_features(features, torch.zeros(2, 100, dtype=torch.bool))


# ---- freezing and initialisation -------------------------------------------------------------


def test_towers_frozen_connectors_train(model):
    inner = model.model
    for tower in (inner.vision_tower, inner.speech_tower, inner.audio_tower):
        assert not any(p.requires_grad for p in tower.parameters())
    for connector in (
        inner.mm_projector,
        inner.speech_aligner,
        inner.speech_projector,
        inner.audio_aligner,
        inner.audio_projector,
    ):
        assert all(p.requires_grad for p in connector.parameters())
    model.freeze_towers(False)
    assert all(p.requires_grad for p in inner.vision_tower.parameters())
    model.freeze_towers()
    assert not any(p.requires_grad for p in inner.vision_tower.parameters())


def test_query_tokens_start_distinct(model):
    for aligner in (model.model.speech_aligner, model.model.audio_aligner):
        queries = aligner.query_tokens[0]
        assert queries.std() > 0.01
        assert torch.cdist(queries, queries).fill_diagonal_(1.0).min() > 0


def test_missing_encoder_error():
    model = build(tiny_config(vision=False, speech=False, audio=False))
    assert model.model.vision_tower is None and model.model.speech_tower is None and model.model.audio_tower is None
    with pytest.raises(ValueError, match="no image encoder"):
        model.get_image_features(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="no speech encoder"):
        model.get_speech_features(torch.randn(1, 80, 3000))
