"""BEATs fbank features and speech chunking (modeling_unimoe/feature_extraction_unimoe.py).

The reference fbank below is written from the Kaldi definitions with plain torch float64 math
(framing with snip-edges, DC removal, pre-emphasis 0.97, povey window, |rfft|^2, triangular
mel banks in Kaldi's mel scale 1127 ln(1 + f/700) over 20 Hz..Nyquist, log with floor eps); it
shares no code with `transformers.audio_utils`.
"""

import math

import numpy as np
import pytest
import torch

from modeling_unimoe.feature_extraction_unimoe import UniMoeBeatsFeatureExtractor, split_speech_chunks

SR = 16000
CHUNK = 480000
MEAN, STD = 15.41663, 6.55582


def kaldi_fbank_reference(waveform: np.ndarray, num_bins: int = 128) -> np.ndarray:
    x = torch.tensor(waveform, dtype=torch.float64) * 2**15
    frame, hop, fft = 400, 160, 512
    frames = x.unfold(0, frame, hop)  # snip_edges: only whole frames, (num_frames, 400)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[-1] := x[0]
    frames = frames - 0.97 * previous
    n = torch.arange(frame, dtype=torch.float64)
    frames = frames * (0.5 - 0.5 * torch.cos(2 * math.pi * n / (frame - 1))) ** 0.85
    power = torch.fft.rfft(frames, n=fft).abs() ** 2

    def mel(f):
        return 1127.0 * torch.log1p(torch.as_tensor(f, dtype=torch.float64) / 700.0)

    low, high = mel(20.0), mel(SR / 2)
    step = (high - low) / (num_bins + 1)
    bin_mel = mel(torch.arange(fft // 2, dtype=torch.float64) * SR / fft)
    banks = torch.zeros(num_bins, fft // 2 + 1, dtype=torch.float64)  # Nyquist column stays 0
    for b in range(num_bins):
        left, centre, right = low + b * step, low + (b + 1) * step, low + (b + 2) * step
        rising, falling = (bin_mel - left) / (centre - left), (right - bin_mel) / (right - centre)
        banks[b, : fft // 2] = torch.clamp(torch.minimum(rising, falling), min=0)
    energies = power @ banks.T
    return torch.log(torch.clamp(energies, min=float(np.finfo(np.float32).eps))).numpy()


def synthetic_tone(seconds: float = 30.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * (t % 2 < 1) + 0.05 * rng.standard_normal(t.size)
    x[: SR // 2] = 0.0  # digital silence exercises the log floor
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def extractor():
    return UniMoeBeatsFeatureExtractor()


def test_fbank_matches_kaldi_reference(extractor):
    wave = synthetic_tone()
    features = extractor(wave)["audio_input_features"]
    assert features.shape == (1, 2998, 128) and features.dtype == np.float32
    reference = (kaldi_fbank_reference(wave) - MEAN) / (2 * STD)
    np.testing.assert_allclose(features[0], reference, atol=1e-4)


def test_fbank_matches_torchaudio_when_installed(extractor):
    kaldi = pytest.importorskip(
        "torchaudio.compliance.kaldi", reason="torchaudio is not installed (optional fast path)"
    )
    wave = synthetic_tone(seconds=30.0, seed=1)
    official = kaldi.fbank(
        torch.from_numpy(wave).unsqueeze(0) * 2**15,
        num_mel_bins=128,
        sample_frequency=16000,
        frame_length=25,
        frame_shift=10,
    ).numpy()
    ours = extractor(wave)["audio_input_features"][0]
    np.testing.assert_allclose(ours, (official - MEAN) / (2 * STD), atol=1e-3)
    via_backend = UniMoeBeatsFeatureExtractor(fbank_backend="torchaudio")(wave)["audio_input_features"][0]
    np.testing.assert_allclose(via_backend, ours, atol=1e-3)


def test_chunks_pad_by_repeating_the_last_sample(extractor):
    wave = synthetic_tone(seconds=62.5, seed=2)
    chunks, sample_mask = extractor.chunk(wave)
    valid_last = len(wave) - 2 * CHUNK  # 20000 samples in the third chunk
    assert chunks.shape == sample_mask.shape == (3, CHUNK)
    np.testing.assert_array_equal(chunks.reshape(-1)[: len(wave)], wave)
    assert (chunks[2, valid_last:] == wave[-1]).all()
    assert not sample_mask[:2].any() and not sample_mask[2, :valid_last].any() and sample_mask[2, valid_last:].all()


def test_frame_padding_mask_follows_the_official_mapping(extractor):
    wave = synthetic_tone(seconds=62.5, seed=2)
    out = extractor(wave)
    mask = out["audio_padding_mask"]
    assert mask.shape == (3, 2998) and mask.dtype == bool
    # Official: drop the last 320 sample flags, view (2998, 160), padding iff all 160 are. For
    # a chunk with v valid samples that is frames f with 160 f >= v.
    valid_last = len(wave) - 2 * CHUNK
    expected_last = np.arange(2998) * 160 >= valid_last
    assert not mask[:2].any()
    np.testing.assert_array_equal(mask[2], expected_last)
    # and the features are those of the padded chunk
    padded = np.concatenate([wave[2 * CHUNK :], np.full(CHUNK - valid_last, wave[-1], np.float32)])
    reference = (kaldi_fbank_reference(padded) - MEAN) / (2 * STD)
    np.testing.assert_allclose(out["audio_input_features"][2], reference, atol=1e-4)


def test_items_concatenate_in_order(extractor):
    short, exact = synthetic_tone(1.0, seed=3), synthetic_tone(30.0, seed=4)
    out = extractor([short, exact], return_tensors="pt")
    assert out["audio_input_features"].shape == (2, 2998, 128)
    assert out["audio_padding_mask"].dtype == torch.bool
    assert out["audio_padding_mask"][0].sum() == 2998 - 100  # 1 s = frames 0..99 hold signal
    assert not out["audio_padding_mask"][1].any()  # exactly 30 s: no padding
    assert extractor.num_chunks(CHUNK) == 1 and extractor.num_chunks(CHUNK + 1) == 2 and extractor.num_chunks(0) == 1


def test_too_long_empty_and_wrong_rate_are_errors():
    extractor = UniMoeBeatsFeatureExtractor(max_chunks=1)
    with pytest.raises(ValueError, match="audio item 1 is 31.0 s long: 2 chunks of 30 s, more than max_chunks=1"):
        extractor([np.zeros(SR, np.float32), np.zeros(31 * SR, np.float32)])
    with pytest.raises(ValueError, match="audio item 0: expected a non-empty mono waveform"):
        extractor([np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="expects audio at 16000 Hz, got 44100 Hz"):
        extractor(np.zeros(SR, np.float32), sampling_rate=44100)
    with pytest.raises(ValueError, match="fbank_backend"):
        UniMoeBeatsFeatureExtractor(fbank_backend="librosa")


def test_extractor_config_round_trip(tmp_path, extractor):
    extractor.save_pretrained(tmp_path)
    config = (tmp_path / "preprocessor_config.json").read_text()
    assert "mel_filters" not in config and "window" not in config  # derived, not saved
    reloaded = UniMoeBeatsFeatureExtractor.from_pretrained(tmp_path)
    assert reloaded.max_chunks == extractor.max_chunks and reloaded.fbank_mean == MEAN
    np.testing.assert_array_equal(reloaded.mel_filters, extractor.mel_filters)


def test_speech_chunking_exact_and_official():
    wave = np.arange(2 * CHUNK + 5, dtype=np.float32)
    exact = split_speech_chunks(wave, CHUNK)
    assert [len(c) for c in exact] == [CHUNK, CHUNK, 5]
    np.testing.assert_array_equal(np.concatenate(exact), wave)
    official = split_speech_chunks(wave, CHUNK, official=True)
    # official: while > 480000 remain take 480001 and continue after them
    assert [len(c) for c in official] == [CHUNK + 1, CHUNK + 1, 3]
    assert official[1][0] == CHUNK + 1
    assert [len(c) for c in split_speech_chunks(wave[:CHUNK], CHUNK, official=True)] == [CHUNK]
    assert [len(c) for c in split_speech_chunks(wave[: CHUNK + 1], CHUNK, official=True)] == [CHUNK + 1, 0]
    assert [len(c) for c in split_speech_chunks(wave[: CHUNK + 1], CHUNK)] == [CHUNK, 1]
