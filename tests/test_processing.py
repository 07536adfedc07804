"""UniMoeProcessor.__call__: placeholder expansion, feature layout, batching, errors, save/load.

References: the transformers extractors called directly on the expected chunks/images, the
sentencepiece model for token ids, solid-colour images for row order, and an isolated Python
process (no `modeling_unimoe` importable) for remote-code loading.
"""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
import sentencepiece as spm
import torch
from transformers import AutoProcessor, CLIPImageProcessorPil, WhisperFeatureExtractor

from modeling_unimoe import MediaError, UniMoeConfig, UniMoeProcessor
from unimoe_conversion.tiny_checkpoint import (
    build_tiny_processor,
    build_tiny_tokenizer,
    tiny_processor_counts,
    tiny_sentencepiece_model,
    write_tiny_checkpoint,
)
from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image, write_video

SR = 16000
BOS = 1
IMAGE, VIDEO, SPEECH, AUDIO = 400, 401, 402, 403


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_proto=tiny_sentencepiece_model())


def solid(colour) -> np.ndarray:
    return np.full((40, 56, 3), colour, dtype=np.uint8)


def test_items_expand_to_their_feature_counts(processor, tmp_path):
    speech = write_audio(tmp_path / "s.wav", sine_wave(40.0))  # 2 chunks of 30 s
    audio = write_audio(tmp_path / "a.flac", sine_wave(70.0, frequency=880.0))  # 3 chunks
    video = write_video(tmp_path / "v.webm", num_frames=16, fps=8)
    text = "<image> <video> <speech> <audio> What?"
    out = processor(text=text, images=[solid((255, 0, 0))], videos=[video], speech=[speech], audios=[audio])
    ids = out["input_ids"][0]
    assert (ids == IMAGE).sum() == 4 and (ids == VIDEO).sum() == 4
    assert (ids == SPEECH).sum() == 2 * 4 and (ids == AUDIO).sum() == 3 * 4
    assert out["pixel_values"].shape == (1, 3, 28, 28) and out["pixel_values"].dtype == torch.float32
    assert out["pixel_values_videos"].shape == (1, 8, 3, 28, 28)
    assert out["input_features"].shape == (2, 80, 3000)
    assert out["audio_input_features"].shape == (3, 2998, 128)
    assert out["audio_padding_mask"].shape == (3, 2998) and out["audio_padding_mask"].dtype == torch.bool
    assert not out["audio_padding_mask"][:2].any() and out["audio_padding_mask"][2].sum() == 2998 - 1000


def test_speech_features_are_whisper_features_of_exact_chunks(processor):
    wave = sine_wave(45.0, frequency=300.0)[0]
    out = processor(text="<speech>", speech=[(wave, SR)])
    reference = WhisperFeatureExtractor()([wave[:480000], wave[480000:]], sampling_rate=SR, return_tensors="np")
    np.testing.assert_allclose(out["input_features"].numpy(), reference["input_features"], atol=1e-6)


def test_official_speech_chunking_flag(processor, tmp_path):
    wave = np.zeros(960001, dtype=np.float32)
    wave[::100] = 0.1
    exact = processor(text="<speech>", speech=[(wave, SR)])
    official = UniMoeProcessor(**{**_parts(processor), "speech_chunking": "official"})(
        text="<speech>", speech=[(wave, SR)]
    )
    assert exact["input_features"].shape[0] == 3 and (exact["input_ids"] == SPEECH).sum() == 12
    # official: 480001 + 480000 remaining -> 2 chunks, one sample never used
    assert official["input_features"].shape[0] == 2 and (official["input_ids"] == SPEECH).sum() == 8


def _parts(processor) -> dict:
    return {
        "image_processor": processor.image_processor,
        "feature_extractor": processor.feature_extractor,
        "audio_feature_extractor": processor.audio_feature_extractor,
        "tokenizer": processor.tokenizer,
        "image_seq_length": processor.image_seq_length,
        "video_seq_length": processor.video_seq_length,
        "speech_tokens_per_chunk": processor.speech_tokens_per_chunk,
        "audio_tokens_per_chunk": processor.audio_tokens_per_chunk,
    }


def test_batch_keeps_media_in_placeholder_order(processor, sp):
    red, green, blue = solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255))
    texts = ["<image> and <image> differ?", "<image>"]
    out = processor(text=texts, images=[red, green, blue])
    nested = processor(text=texts, images=[[red, green], [blue]])
    for key in ("input_ids", "attention_mask", "pixel_values"):
        torch.testing.assert_close(out[key], nested[key])
    reference = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})(
        [red, green, blue], return_tensors="pt"
    )["pixel_values"]
    torch.testing.assert_close(out["pixel_values"], reference)
    dominant = out["pixel_values"].mean(dim=(2, 3)).argmax(dim=1).tolist()
    assert dominant == [0, 1, 2]  # red, green, blue rows
    # left padding by default; the short sample ends flush right
    second = [BOS] + sp.encode("") + [IMAGE] * 4
    width = out["input_ids"].shape[1]
    assert out["input_ids"][1].tolist() == [0] * (width - len(second)) + second
    assert out["attention_mask"][1].tolist() == [0] * (width - len(second)) + [1] * len(second)
    right = processor(text=texts, images=[red, green, blue], padding_side="right")
    assert right["input_ids"][1].tolist() == second + [0] * (width - len(second))


def test_text_only_and_special_tokens(processor, sp):
    out = processor(text="Hello there", return_tensors=None)
    assert out["input_ids"] == [[BOS] + sp.encode("Hello there")]
    assert processor(text="Hello", add_special_tokens=False, return_tensors=None)["input_ids"] == [sp.encode("Hello")]
    # a prompt that already starts with BOS does not get a second one
    assert processor(text="<s>Hi", return_tensors=None)["input_ids"] == [[BOS] + sp.encode("Hi")]


def test_every_input_kind(processor, tmp_path):
    png = write_image(tmp_path / "i.png")
    video = write_video(tmp_path / "v.mp4", num_frames=8, fps=8, audio=sine_wave(1.0))
    frames = [solid((10 * i, 0, 0)) for i in range(8)]
    out = processor(
        text="<image><image><image> <video><video> <speech><speech><speech> <audio><audio>",
        images=[png, png.read_bytes(), open(png, "rb")],
        videos=[video, frames],
        speech=[video, (sine_wave(0.5, 8000)[0], 8000), {"array": np.zeros(SR, np.float32), "sampling_rate": SR}],
        audios=[str(video), torch.zeros(SR)],
        sampling_rate=SR,  # the rate of the bare tensor
    )
    assert out["pixel_values"].shape[0] == 3 and out["pixel_values_videos"].shape[0] == 2
    assert out["input_features"].shape[0] == 3 and out["audio_input_features"].shape[0] == 2
    torch.testing.assert_close(out["pixel_values"][0], out["pixel_values"][1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"text": "<image> <image>", "images": [np.zeros((8, 8, 3), np.uint8)]},
            r"2 <image> placeholder\(s\) \(sample 0: 2\) but 1 image item",
        ),
        ({"text": "hi", "images": [np.zeros((8, 8, 3), np.uint8)]}, r"0 <image> placeholder\(s\) .* but 1 image item"),
        ({"text": "<speech>"}, r"1 <speech> placeholder\(s\) .* but 0 speech item"),
        (
            {"text": ["<audio>", "x"], "audios": [[], [np.zeros(10)]]},
            r"sample 0 has 1 <audio> placeholder\(s\) but 0 audio item",
        ),
        ({"text": None}, r"needs `text`"),
        ({"text": "x", "audio": [1], "audios": [1]}, r"not both"),
    ],
)
def test_placeholder_and_media_counts_must_match(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(**kwargs)


def test_unknown_keyword_is_a_type_error(processor):
    with pytest.raises(TypeError, match="num_frames"):
        processor(text="x", num_frames=4)


def test_bad_item_is_named_before_any_feature_work(processor, tmp_path, monkeypatch):
    good = write_image(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"this is not a png")

    def no_features(*args, **kwargs):
        raise AssertionError("features computed before all media were loaded")

    monkeypatch.setattr(processor, "_features", no_features)
    with pytest.raises(MediaError, match=r"image item 1 \(sample 1\): 'bad.png': not an image"):
        processor(text=["<image>", "<image>"], images=[good, tmp_path / "bad.png"])


def test_too_long_speech_and_audio(processor, tmp_path):
    short = UniMoeProcessor(**{**_parts(processor), "max_speech_chunks": 1, "max_audio_chunks": 1})
    long_wav = write_audio(tmp_path / "long.wav", np.zeros(int(31.5 * SR), np.float32))
    with pytest.raises(
        MediaError, match=r"speech item 0 \(sample 0\): 'long.wav': audio is 31.5 s long, more than the maximum of 30 s"
    ):
        short(text="<speech>", speech=[long_wav])
    with pytest.raises(MediaError, match=r"audio item 0 \(sample 0\): 'long.wav'"):
        short(text="<audio>", audios=[long_wav])
    with pytest.raises(MediaError, match=r"speech item 0 \(sample 0\): <tuple audio>: audio is 30.006 s long"):
        short(text="<speech>", speech=[(np.zeros(480100, np.float32), SR)])
    # a file within the header's slack (codec padding) is caught by its chunk count
    slightly_long = write_audio(tmp_path / "slightly.wav", np.zeros(int(30.1 * SR), np.float32))
    with pytest.raises(MediaError, match=r"speech item 0 \(sample 0\) 'slightly.wav': 30.1 s is 2 chunks of 30 s"):
        short(text="<speech>", speech=[slightly_long])


def test_tiny_tokenizer_matches_sentencepiece(sp):
    tokenizer = build_tiny_tokenizer()
    assert tokenizer("Hello world").input_ids == [BOS] + sp.encode("Hello world")
    assert tokenizer.convert_tokens_to_ids(["<image>", "<video>", "<speech>", "<audio>"]) == [400, 401, 402, 403]
    assert tokenizer.pad_token_id == 0 == sp.unk_id()


def test_counts_follow_the_model_config():
    config = UniMoeConfig(
        text_config={
            "vocab_size": 400,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 64,
        },
        vision_config={
            "image_size": 56,
            "patch_size": 14,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 64,
        },
        speech_config=None,
    )
    counts = tiny_processor_counts(config)
    assert counts["image_size"] == 56 and counts["image_seq_length"] == 16 == counts["video_seq_length"]
    processor = build_tiny_processor(config, speech_tokens_per_chunk=6)
    assert processor.image_processor.crop_size == {"height": 56, "width": 56}
    assert processor.speech_tokens_per_chunk == 6 and processor.tokens_per_item("speech", 3) == 18
    assert UniMoeProcessor(tokenizer=build_tiny_tokenizer()).image_seq_length == 576  # released defaults


def _expected(processor, image_path) -> dict:
    out = processor(text=["<image> What?", "Hi"], images=[image_path], return_tensors="np")
    return {k: np.asarray(v).tolist() for k, v in out.items() if k != "pixel_values"} | {
        "pixel_sum": float(out["pixel_values"].sum())
    }


def test_save_and_load_round_trip(processor, tmp_path):
    image = write_image(tmp_path / "i.png")
    processor.save_pretrained(tmp_path / "saved")
    saved = tmp_path / "saved"
    for name in (
        "processor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "processing_unimoe.py",
        "feature_extraction_unimoe.py",
        "media_unimoe.py",
    ):
        assert (saved / name).is_file(), name
    config = json.loads((saved / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_unimoe.UniMoeProcessor"
    assert (
        config["image_seq_length"] == 4 and config["audio_tokens_per_chunk"] == 4 and config["max_speech_chunks"] == 20
    )
    assert config["audio_feature_extractor"]["feature_extractor_type"] == "UniMoeBeatsFeatureExtractor"
    assert (saved / "chat_template.jinja").read_text() == processor.chat_template
    reference = _expected(processor, image)
    for loaded in (UniMoeProcessor.from_pretrained(saved), AutoProcessor.from_pretrained(saved)):
        assert type(loaded).__name__ == "UniMoeProcessor"
        assert loaded.chat_template == processor.chat_template
        assert _expected(loaded, image) == reference


ISOLATED = textwrap.dedent(
    """
    import json, sys
    sys.path.append(sys.argv[1])  # site-packages only: no .pth files, so no editable install
    try:
        import modeling_unimoe
        raise SystemExit("modeling_unimoe must not be importable here")
    except ModuleNotFoundError:
        pass
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(sys.argv[2], trust_remote_code=True)
    out = processor(text=["<image> What?", "Hi"], images=[sys.argv[3]], return_tensors="np")
    result = {k: v.tolist() for k, v in out.items() if k != "pixel_values"}
    result["pixel_sum"] = float(out["pixel_values"].sum())
    result["module"] = type(processor).__module__
    result["beats"] = type(processor.audio_feature_extractor).__name__
    print(json.dumps(result))
    """
)


def test_auto_processor_loads_remote_code_without_the_package(processor, tmp_path):
    """The checkpoint folder must be self-contained. `python -I -S` starts with neither the
    working directory, PYTHONPATH nor site-packages' .pth files (the editable install of this
    repo is one), then we append only the site-packages directory for transformers & co."""
    image = write_image(tmp_path / "i.png")
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt")
    site_packages = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", ISOLATED, site_packages, str(checkpoint), str(image)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded.pop("module").startswith("transformers_modules.")
    assert loaded.pop("beats") == "UniMoeBeatsFeatureExtractor"
    assert loaded == _expected(processor, image)


def test_tiny_checkpoint_carries_the_sentencepiece_model(tmp_path, sp):
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt")
    assert (checkpoint / "tokenizer.model").read_bytes() == tiny_sentencepiece_model()
    loaded = AutoProcessor.from_pretrained(checkpoint)
    assert loaded.image_seq_length == 4 and loaded.image_processor.crop_size == {"height": 28, "width": 28}
    assert loaded(text="Hi", return_tensors=None)["input_ids"] == [[BOS] + sp.encode("Hi")]


def test_model_input_names(processor):
    assert processor.model_input_names == [
        "input_ids",
        "attention_mask",
        "pixel_values",
        "pixel_values_videos",
        "input_features",
        "audio_input_features",
        "audio_padding_mask",
    ]
