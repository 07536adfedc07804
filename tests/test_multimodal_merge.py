"""Placeholder merge, mixed-modality batches and generation with media, on a tiny random model.

Tiny token counts (`tiny_config`): image 4, video 4 (4 frames averaged), speech 5 per 30-s
chunk, audio 3 per 30-s chunk. Prompts are written as token ids with the placeholder runs the
processor would produce.
"""

import pytest
import torch

from modeling_unimoe import UniMoeForConditionalGeneration
from unimoe_conversion.tiny_checkpoint import tiny_config

CONFIG = tiny_config()
IMAGE, VIDEO, SPEECH, AUDIO = (
    CONFIG.image_token_id,
    CONFIG.video_token_id,
    CONFIG.speech_token_id,
    CONFIG.audio_token_id,
)
PAD = 0
MEDIA_KEYS = ("pixel_values", "pixel_values_videos", "input_features", "audio_input_features", "audio_padding_mask")


@pytest.fixture(scope="module")
def model() -> UniMoeForConditionalGeneration:
    torch.manual_seed(0)
    return UniMoeForConditionalGeneration(CONFIG).eval()


def placeholders(modality: str, num_chunks: int = 1) -> list[int]:
    token = {"image": IMAGE, "video": VIDEO, "speech": SPEECH, "audio": AUDIO}[modality]
    return [token] * CONFIG.num_media_tokens(modality, num_chunks)


def padded_audio(num_chunks: int, padded_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(num_chunks, 2998, dtype=torch.bool)
    mask[-1, -padded_frames:] = True
    return torch.randn(num_chunks, 2998, 128), mask


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    """A: image + 2-chunk speech; B: video + 1-chunk audio (padded); C: text only."""
    torch.manual_seed(1)
    audio, audio_mask = padded_audio(1, padded_frames=900)
    return [
        {
            "ids": [1, 10, 11, *placeholders("image"), 12, *placeholders("speech", 2), 13, 14],
            "media": {"pixel_values": torch.randn(1, 3, 28, 28), "input_features": torch.randn(2, 80, 3000)},
        },
        {
            "ids": [1, 20, *placeholders("video"), 21, *placeholders("audio"), 22],
            "media": {
                "pixel_values_videos": torch.randn(1, 4, 3, 28, 28),
                "audio_input_features": audio,
                "audio_padding_mask": audio_mask,
            },
        },
        {"ids": [1, 30, 31, 32, 33], "media": {}},
    ]


def batch_of(samples: list[dict], padding_side: str) -> dict:
    """Pads the prompts and concatenates each media input over the samples, in order."""
    length = max(len(s["ids"]) for s in samples)
    input_ids = torch.full((len(samples), length), PAD)
    attention_mask = torch.zeros(len(samples), length, dtype=torch.long)
    for row, sample in enumerate(samples):
        span = slice(length - len(sample["ids"]), length) if padding_side == "left" else slice(0, len(sample["ids"]))
        input_ids[row, span] = torch.tensor(sample["ids"])
        attention_mask[row, span] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key in MEDIA_KEYS:
        parts = [s["media"][key] for s in samples if key in s["media"]]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


def alone(sample: dict) -> dict:
    return {"input_ids": torch.tensor([sample["ids"]]), **sample["media"]}


def count_tower_calls(model: UniMoeForConditionalGeneration) -> tuple[dict[str, list[int]], list]:
    """Records the batch size of every call of each tower."""
    calls = {"vision": [], "speech": [], "audio": []}
    handles = []
    for name in calls:
        tower = getattr(model.model, f"{name}_tower")

        def hook(module, args, kwargs, name=name):
            inputs = args[0] if args else next(iter(kwargs.values()))
            calls[name].append(inputs.shape[0])

        handles.append(tower.register_forward_pre_hook(hook, with_kwargs=True))
    return calls, handles


# ---- merge -----------------------------------------------------------------------------------


def test_features_fill_placeholders_in_row_major_order(model):
    """Images of two samples: rows go to placeholders sample by sample, left to right."""
    ids = torch.tensor(
        [
            [1, *placeholders("image"), 5, *placeholders("image"), 6],
            [1, 7, 8, *placeholders("image"), 9, 9, 9, PAD],
        ]
    )
    pixel_values = torch.randn(3, 3, 28, 28)
    inner = model.model
    merged = inner.merge_multimodal_features(ids, inner.embed_text(ids), pixel_values=pixel_values)
    rows = iter(model.get_image_features(pixel_values).reshape(-1, 32))
    text = inner.embed_tokens(ids.masked_fill(ids == IMAGE, 0))
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            expected = next(rows) if ids[b, t] == IMAGE else text[b, t]
            torch.testing.assert_close(merged[b, t], expected)
    assert next(rows, None) is None


@pytest.mark.parametrize(
    ("ids", "media", "message"),
    [
        (
            [1, IMAGE, *placeholders("image")],
            {"pixel_values": torch.randn(1, 3, 28, 28)},
            "image .* tokens: 5, features: 4",
        ),
        ([1, *placeholders("image"), 2], {}, "image .* tokens: 4, features: 0"),
        ([1, 2, 3], {"pixel_values": torch.randn(1, 3, 28, 28)}, "image .* tokens: 0, features: 4"),
        (
            [1, *placeholders("speech")],
            {"input_features": torch.randn(2, 80, 3000)},
            "speech .* tokens: 5, features: 10",
        ),
        (
            [1, *placeholders("video")],
            {"pixel_values_videos": torch.randn(2, 4, 3, 28, 28)},
            "video .* tokens: 4, features: 8",
        ),
        (
            [1, *placeholders("audio", 2)],
            {"audio_input_features": torch.randn(1, 2998, 128)},
            "audio .* tokens: 6, features: 3",
        ),
    ],
)
def test_placeholder_count_error_names_both_counts(model, ids, media, message):
    with pytest.raises(ValueError, match=message):
        model(input_ids=torch.tensor([ids]), **media)


def test_media_with_inputs_embeds_is_an_error(model):
    with pytest.raises(ValueError, match="need input_ids"):
        model(inputs_embeds=torch.randn(1, 5, 32), pixel_values=torch.randn(1, 3, 28, 28))


def test_padding_mask_without_audio_is_an_error(model):
    with pytest.raises(ValueError, match="audio_padding_mask was given without"):
        model(input_ids=torch.tensor([[1, 2]]), audio_padding_mask=torch.zeros(1, 2998, dtype=torch.bool))


def test_media_for_absent_encoder_is_an_error():
    model = UniMoeForConditionalGeneration(tiny_config(vision=False, audio=False)).eval()
    with pytest.raises(ValueError, match="no video encoder"):
        model(input_ids=torch.tensor([[1, VIDEO]]), pixel_values_videos=torch.randn(1, 4, 3, 28, 28))


def test_no_media_no_encoder_calls(model, samples):
    calls, handles = count_tower_calls(model)
    try:
        model(**alone(samples[2]))
        assert calls == {"vision": [], "speech": [], "audio": []}
        model(**batch_of(samples, "right"))
        # Exactly the given media, nothing for the samples without them: 1 image, then 4 frames.
        assert calls == {"vision": [1, 4], "speech": [2], "audio": [1]}
    finally:
        for handle in handles:
            handle.remove()


# ---- mixed batches ---------------------------------------------------------------------------


def test_mixed_batch_logits_equal_each_sample_alone(model, samples):
    with torch.no_grad():
        batched = model(**batch_of(samples, "right")).logits
        for row, sample in enumerate(samples):
            single = model(**alone(sample)).logits[0]
            torch.testing.assert_close(batched[row, : len(sample["ids"])], single, atol=1e-5, rtol=1e-4)


def test_mixed_batch_greedy_generation_equals_each_sample_alone(model, samples):
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    batch = batch_of(samples, "left")
    generated = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]
    for row, sample in enumerate(samples):
        single = model.generate(**alone(sample), **kwargs)[0, len(sample["ids"]) :]
        assert generated[row].tolist() == single.tolist()


def test_cached_generation_equals_uncached_and_encodes_media_once(model, samples):
    """All four modalities in one prompt (one speech chunk)."""
    sample = {
        "ids": [1, *placeholders("image"), *placeholders("speech"), 5, *samples[1]["ids"][1:]],
        "media": {
            **samples[0]["media"],
            "input_features": samples[0]["media"]["input_features"][:1],
            **samples[1]["media"],
        },
    }
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    calls, handles = count_tower_calls(model)
    try:
        cached = model.generate(**alone(sample), use_cache=True, **kwargs)
        assert calls == {"vision": [1, 4], "speech": [1], "audio": [1]}  # prefill only
        for value in calls.values():
            value.clear()
        uncached = model.generate(**alone(sample), use_cache=False, **kwargs)
        assert len(calls["audio"]) == len(calls["speech"]) == 4  # re-read at every step
    finally:
        for handle in handles:
            handle.remove()
    assert cached.tolist() == uncached.tolist()


def test_beam_search_repeats_samples_not_media_items(model):
    """Beams repeat each sample with its own block of images and speech chunks (a sample with two
    images and a 2-chunk speech item, next to one with one of each)."""
    torch.manual_seed(2)
    samples = [
        {
            "ids": [1, *placeholders("image"), 5, *placeholders("image"), *placeholders("speech", 2), 6],
            "media": {"pixel_values": torch.randn(2, 3, 28, 28), "input_features": torch.randn(2, 80, 3000)},
        },
        {
            "ids": [1, 7, *placeholders("image"), 8, *placeholders("speech"), 9],
            "media": {"pixel_values": torch.randn(1, 3, 28, 28), "input_features": torch.randn(1, 80, 3000)},
        },
    ]
    kwargs = dict(
        max_new_tokens=3, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=PAD, eos_token_id=None
    )
    batch = batch_of(samples, "left")
    generated = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]
    for row, sample in enumerate(samples):
        single = model.generate(**alone(sample), **kwargs)[:, len(sample["ids"]) :]
        assert generated[2 * row : 2 * row + 2].tolist() == single.tolist()


# ---- training --------------------------------------------------------------------------------


def test_loss_trains_connectors_not_towers(samples):
    torch.manual_seed(0)
    model = UniMoeForConditionalGeneration(CONFIG).train()
    batch = batch_of(samples, "right")
    labels = (
        batch["input_ids"]
        .masked_fill(batch["input_ids"] >= IMAGE, -100)
        .masked_fill(batch["attention_mask"] == 0, -100)
    )
    model(**batch, labels=labels).loss.backward()
    inner = model.model
    for tower in (inner.vision_tower, inner.speech_tower, inner.audio_tower):
        assert all(p.grad is None for p in tower.parameters())
    for connector in (inner.mm_projector, inner.speech_projector, inner.audio_projector):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector.parameters())
    assert inner.speech_aligner.query_tokens.grad.abs().sum() > 0
    assert inner.audio_aligner.query_tokens.grad.abs().sum() > 0


def test_reload_keeps_towers_frozen_and_outputs(model, samples, tmp_path):
    model.save_pretrained(tmp_path)
    reloaded = UniMoeForConditionalGeneration.from_pretrained(tmp_path).eval()
    for tower in (reloaded.model.vision_tower, reloaded.model.speech_tower, reloaded.model.audio_tower):
        assert not any(p.requires_grad for p in tower.parameters())
    batch = batch_of(samples, "right")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)
