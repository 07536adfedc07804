"""Audio features for Uni-MoE: the BEATs fbank extractor and the 30 s chunking of speech.

BEATs reads Kaldi-compatible 128-bin log-mel filter banks (25 ms windows every 10 ms, povey
window, pre-emphasis 0.97, DC offset removed, waveform scaled to 16-bit range), normalised as
`(fbank - 15.41663) / (2 * 6.55582)`, over chunks of exactly 30 s (480000 samples -> 2998
frames). The last chunk is padded by repeating its last sample; `audio_padding_mask` marks the
frames made only of padding (official sample -> frame mapping).

The fbank is computed with numpy, all frames at once (filters and window from
`transformers.audio_utils`), so torchaudio is not needed; with `fbank_backend="torchaudio"` it
is `torchaudio.compliance.kaldi.fbank`, as in the official code.

This file travels with every saved checkpoint (remote code).
"""

import math
import warnings

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.audio_utils import mel_filter_bank, optimal_fft_length, window_function

KALDI_LOG_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi's log floor (torchaudio `EPSILON`)


def split_speech_chunks(waveform: np.ndarray, chunk_samples: int = 480000, official: bool = False) -> list[np.ndarray]:
    """Splits speech into Whisper's 30 s windows; the feature extractor pads the last one.

    `official=False` (default): exact consecutive chunks, `ceil(n / chunk_samples)` of them.
    `official=True`: the official loop, which takes `chunk_samples + 1` samples while more than
    `chunk_samples` remain (the extractor then drops the extra one, so one sample per full chunk
    is lost) and always emits the remainder, even when empty.
    """
    if not official:
        count = max(1, math.ceil(len(waveform) / chunk_samples))
        return [waveform[i * chunk_samples : (i + 1) * chunk_samples] for i in range(count)]
    chunks = []
    while len(waveform) > chunk_samples:
        chunks.append(waveform[: chunk_samples + 1])
        waveform = waveform[chunk_samples + 1 :]
    chunks.append(waveform)
    return chunks


class UniMoeBeatsFeatureExtractor(SequenceFeatureExtractor):
    r"""Kaldi log-mel filter banks for the BEATs audio encoder, in fixed 30 s chunks.

    Args:
        feature_size (`int`, defaults to 128): mel bins.
        sampling_rate (`int`, defaults to 16000): expected input rate.
        chunk_length (`int`, defaults to 30): chunk length in seconds.
        max_chunks (`int`, defaults to 20): chunks per item; longer audio is an error (the
            official code silently drops what follows 10 minutes).
        frame_length_ms, frame_shift_ms (`float`, defaults to 25 and 10): Kaldi framing.
        fbank_mean, fbank_std (`float`): BEATs normalisation, `(fbank - mean) / (2 * std)`.
        fbank_backend (`str`, defaults to `"numpy"`): `"numpy"` (vectorised, float64) or
            `"torchaudio"` (`torchaudio.compliance.kaldi.fbank`, must be installed).

    Returns (`__call__`): `audio_input_features` float32 `(num_chunks, 2998, 128)` for all chunks
    of all items in order, and `audio_padding_mask` bool `(num_chunks, 2998)`, True = padding.
    """

    model_input_names = ["audio_input_features", "audio_padding_mask"]

    def __init__(
        self,
        feature_size: int = 128,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        chunk_length: int = 30,
        max_chunks: int = 20,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        fbank_mean: float = 15.41663,
        fbank_std: float = 6.55582,
        fbank_backend: str = "numpy",
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        if fbank_backend not in ("numpy", "torchaudio"):
            raise ValueError(f"fbank_backend must be 'numpy' or 'torchaudio', got {fbank_backend!r}")
        self.chunk_length = chunk_length
        self.max_chunks = max_chunks
        self.frame_length_ms = frame_length_ms
        self.frame_shift_ms = frame_shift_ms
        self.fbank_mean = fbank_mean
        self.fbank_std = fbank_std
        self.fbank_backend = fbank_backend
        self.chunk_samples = chunk_length * sampling_rate
        self.frame_length = int(sampling_rate * frame_length_ms / 1000)
        self.hop_length = int(sampling_rate * frame_shift_ms / 1000)
        self.num_frames = 1 + (self.chunk_samples - self.frame_length) // self.hop_length
        self.fft_length = optimal_fft_length(self.frame_length)
        # Kaldi's filters are triangles in mel space from 20 Hz to Nyquist, with a zero Nyquist
        # column. At 128 bins the lowest filters catch no FFT bin; Kaldi keeps them (log floor).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.mel_filters = mel_filter_bank(
                num_frequency_bins=self.fft_length // 2 + 1,
                num_mel_filters=feature_size,
                min_frequency=20.0,
                max_frequency=sampling_rate / 2,
                sampling_rate=sampling_rate,
                norm=None,
                mel_scale="kaldi",
                triangularize_in_mel_space=True,
            )
        self.window = window_function(self.frame_length, "povey", periodic=False)

    def to_dict(self) -> dict:
        output = super().to_dict()
        for derived in (
            "mel_filters",
            "window",
            "chunk_samples",
            "frame_length",
            "hop_length",
            "num_frames",
            "fft_length",
        ):
            output.pop(derived, None)
        return output

    def num_chunks(self, num_samples: int) -> int:
        """Chunks an item of `num_samples` samples occupies (at least one)."""
        return max(1, math.ceil(num_samples / self.chunk_samples))

    def chunk(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Splits into `(num_chunks, chunk_samples)` and a per-sample padding mask (True = pad).
        The last chunk is padded by repeating its last sample, as the official code does."""
        num_chunks = self.num_chunks(len(waveform))
        total = num_chunks * self.chunk_samples
        sample_mask = np.zeros(total, dtype=bool)
        sample_mask[len(waveform) :] = True
        padded = np.concatenate([waveform, np.full(total - len(waveform), waveform[-1], dtype=waveform.dtype)])
        return padded.reshape(num_chunks, -1), sample_mask.reshape(num_chunks, -1)

    def frame_padding_mask(self, sample_mask: np.ndarray) -> np.ndarray:
        """Per-sample mask `(num_chunks, chunk_samples)` -> per-frame `(num_chunks, num_frames)`:
        the official mapping drops the tail that is no frame's hop, views the rest as
        `(num_frames, hop)`, and a frame is padding when all its hop samples are."""
        usable = self.num_frames * self.hop_length
        return sample_mask[:, :usable].reshape(len(sample_mask), self.num_frames, self.hop_length).all(axis=-1)

    def fbank(self, chunks: np.ndarray) -> np.ndarray:
        """Normalised Kaldi fbank of each chunk: `(num_chunks, num_frames, feature_size)` float32."""
        scaled = chunks.astype(np.float64) * 2**15  # Kaldi works on 16-bit sample values
        if self.fbank_backend == "torchaudio":
            features = self._torchaudio_fbank(scaled)
        else:
            features = np.stack([self._numpy_fbank(chunk) for chunk in scaled])
        return ((features - self.fbank_mean) / (2 * self.fbank_std)).astype(np.float32)

    def _numpy_fbank(self, samples: np.ndarray) -> np.ndarray:
        """Kaldi's fbank of one chunk, all frames at once (`audio_utils.spectrogram` loops over
        frames in Python: 15 times slower on a 2 s chunk)."""
        frames = sliding_window_view(samples, self.frame_length)[:: self.hop_length][: self.num_frames]
        frames = frames - frames.mean(axis=-1, keepdims=True)
        # Kaldi pre-emphasises each frame on its own; the first sample is its own predecessor.
        frames = np.concatenate([frames[:, :1], frames[:, :-1]], axis=-1) * -0.97 + frames
        power = np.abs(np.fft.rfft(frames * self.window, n=self.fft_length)) ** 2
        return np.log(np.maximum(power @ self.mel_filters, KALDI_LOG_FLOOR)).astype(np.float32)

    def _torchaudio_fbank(self, scaled: np.ndarray) -> np.ndarray:
        import torch
        import torchaudio.compliance.kaldi as kaldi

        return np.stack(
            [
                kaldi.fbank(
                    torch.from_numpy(chunk).float().unsqueeze(0),
                    num_mel_bins=self.feature_size,
                    sample_frequency=self.sampling_rate,
                    frame_length=self.frame_length_ms,
                    frame_shift=self.frame_shift_ms,
                ).numpy()
                for chunk in scaled
            ]
        )

    def __call__(
        self,
        raw_audio: np.ndarray | list[np.ndarray],
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        max_chunks: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Features of one waveform or a list of mono float waveforms (at `self.sampling_rate`).
        Raises `ValueError` for empty audio or audio longer than `max_chunks` chunks (default
        `self.max_chunks`)."""
        max_chunks = self.max_chunks if max_chunks is None else max_chunks
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(
                f"{type(self).__name__} expects audio at {self.sampling_rate} Hz, got {sampling_rate} Hz: resample first."
            )
        items = [raw_audio] if isinstance(raw_audio, np.ndarray) and raw_audio.ndim == 1 else list(raw_audio)
        items = [np.asarray(waveform, dtype=np.float32) for waveform in items]
        for index, waveform in enumerate(items):  # every item is checked before any work
            if waveform.ndim != 1 or waveform.size == 0:
                raise ValueError(f"audio item {index}: expected a non-empty mono waveform, got shape {waveform.shape}")
            if self.num_chunks(waveform.size) > max_chunks:
                raise ValueError(
                    f"audio item {index} is {waveform.size / self.sampling_rate:.1f} s long: "
                    f"{self.num_chunks(waveform.size)} chunks of {self.chunk_length} s, more than max_chunks={max_chunks}"
                )
        features, masks = [], []
        for waveform in items:
            chunks, sample_mask = self.chunk(waveform)
            features.append(self.fbank(chunks))
            masks.append(self.frame_padding_mask(sample_mask))
        data = {"audio_input_features": np.concatenate(features), "audio_padding_mask": np.concatenate(masks)}
        return BatchFeature(data, tensor_type=return_tensors)


UniMoeBeatsFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

__all__ = ["UniMoeBeatsFeatureExtractor", "split_speech_chunks"]
