"""Media decoding and feature extraction speed.

    python benchmarks/bench_media.py [--minutes 10] [--fps 25] [--width 1280] [--height 720] [--no-video]

1. Video: writes a synthetic H.264 video (low bitrate, default GOP of 250 frames) with PyAV, then
   takes 8 frames with `load_video` (seeking to the keyframe before each target) and, as the
   baseline, by decoding every frame and keeping the same 8 (what the official demo's moviepy
   loop does). Both must return the same frames.
2. Audio: decodes a 10-minute FLAC with `load_audio`, then measures Whisper (speech) and BEATs
   (audio) feature extraction in seconds of audio per second of compute. The BEATs fbank is also
   computed with `transformers.audio_utils.spectrogram_batch` (a Python loop over frames, what
   the extractor used before), which must give the same features.
3. Short WAV clips (what training reads): `load_audio`, which reads integer-PCM WAV directly,
   against FFmpeg's decode of the same files, which must give the same samples.

Prints a markdown table (the numbers in docs/performance.md come from it).
"""

import argparse
import platform
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import spectrogram_batch

from modeling_unimoe.feature_extraction_unimoe import (
    KALDI_LOG_FLOOR,
    UniMoeBeatsFeatureExtractor,
    split_speech_chunks,
)
from modeling_unimoe.media_unimoe import _decode_audio_stream, load_audio, load_video, sample_frame_indices
from unimoe_processing.synthetic_media import frame_index_of, sine_wave, write_audio, write_video


def timed(fn, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def decode_everything(path: Path, indices: list[int]) -> np.ndarray:
    wanted, frames = set(indices), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
    return np.stack([frames[i] for i in indices])


def bench_video(args, tmp: Path) -> list[tuple[str, str]]:
    num_frames = int(args.minutes * 60 * args.fps)
    path = tmp / "long.mp4"
    write_s, _ = timed(
        lambda: write_video(
            path, num_frames=num_frames, fps=args.fps, width=args.width, height=args.height, bit_rate=300_000
        )
    )
    seek_s, video = timed(lambda: load_video(path, num_frames=8), repeat=3)
    indices = sample_frame_indices(num_frames, 8)
    all_s, baseline = timed(lambda: decode_everything(path, indices))
    assert [frame_index_of(f) for f in video.frames] == indices
    assert np.array_equal(video.frames, baseline), "seeking and full decoding must give the same frames"
    size_mb = path.stat().st_size / 1e6
    label = f"{args.minutes:g} min {args.width}x{args.height} @ {args.fps} fps H.264 ({num_frames} frames, {size_mb:.1f} MB)"
    return [
        (f"write {label}", f"{write_s:.1f} s"),
        ("8 frames by seeking (`load_video`)", f"{seek_s:.2f} s"),
        ("8 frames by decoding every frame", f"{all_s:.1f} s"),
        ("speed-up", f"{all_s / seek_s:.0f}x"),
    ]


def bench_audio(args, tmp: Path) -> list[tuple[str, str]]:
    seconds = args.audio_minutes * 60
    rng = np.random.default_rng(0)
    wave = sine_wave(seconds, 44100, 440.0)[0] + 0.05 * rng.standard_normal(int(seconds * 44100)).astype(np.float32)
    path = write_audio(tmp / "long.flac", np.clip(wave, -1, 1), 44100)
    decode_s, waveform = timed(lambda: load_audio(path))
    whisper = WhisperFeatureExtractor()
    chunks = split_speech_chunks(waveform, 480000)
    whisper_s, _ = timed(lambda: whisper(chunks, sampling_rate=16000, return_tensors="np"))
    beats = UniMoeBeatsFeatureExtractor()
    beats_s, out = timed(lambda: beats(waveform, sampling_rate=16000))
    assert out["audio_input_features"].shape[0] == len(chunks)
    looped_s, looped = timed(lambda: looped_fbank(beats, waveform))
    np.testing.assert_allclose(out["audio_input_features"], looped, atol=1e-5)
    return [
        (
            f"decode {args.audio_minutes:g} min FLAC (44.1 kHz) to 16 kHz mono (`load_audio`)",
            f"{seconds / decode_s:.0f} s of audio / s",
        ),
        (f"Whisper log-mel, {len(chunks)} x 30 s chunks", f"{seconds / whisper_s:.0f} s of audio / s"),
        (f"BEATs Kaldi fbank (numpy), {len(chunks)} x 30 s chunks", f"{seconds / beats_s:.0f} s of audio / s"),
        (
            "BEATs Kaldi fbank by `audio_utils.spectrogram_batch` (frame loop)",
            f"{seconds / looped_s:.0f} s of audio / s",
        ),
        ("speed-up of the vectorised fbank", f"{looped_s / beats_s:.1f}x"),
    ]


def bench_short_wav(tmp: Path, clips: int = 200) -> list[tuple[str, str]]:
    """Training reads thousands of short clips per epoch; the demo's are 16-bit 16 kHz WAVs."""
    paths = [write_audio(tmp / f"clip{i}.wav", sine_wave(1.5, 16000, 200.0 + i), 16000) for i in range(clips)]
    direct_s, direct = timed(lambda: [load_audio(p) for p in paths], repeat=3)
    ffmpeg_s, ffmpeg = timed(lambda: [ffmpeg_decode(p) for p in paths], repeat=3)
    assert all(np.array_equal(a, b) for a, b in zip(direct, ffmpeg)), "the WAV reader must match FFmpeg bit for bit"
    return [
        (f"{clips} x 1.5 s 16-bit WAV, `load_audio` (read directly)", f"{direct_s / clips * 1e3:.2f} ms / clip"),
        (f"{clips} x 1.5 s 16-bit WAV, FFmpeg decode (before)", f"{ffmpeg_s / clips * 1e3:.2f} ms / clip"),
        ("speed-up of the direct WAV reader", f"{ffmpeg_s / direct_s:.0f}x"),
    ]


def ffmpeg_decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return _decode_audio_stream(container, path, 16000, None)


def looped_fbank(extractor: UniMoeBeatsFeatureExtractor, waveform: np.ndarray) -> np.ndarray:
    """The same normalised Kaldi fbank through `transformers.audio_utils` (the baseline)."""
    chunks, _ = extractor.chunk(waveform)
    features = spectrogram_batch(
        list(chunks.astype(np.float64) * 2**15),
        extractor.window,
        frame_length=extractor.frame_length,
        hop_length=extractor.hop_length,
        fft_length=extractor.fft_length,
        power=2.0,
        center=False,
        preemphasis=0.97,
        mel_filters=extractor.mel_filters,
        mel_floor=KALDI_LOG_FLOOR,
        log_mel="log",
        remove_dc_offset=True,
        dtype=np.float32,
    )
    return (np.stack([f.T for f in features]) - extractor.fbank_mean) / (2 * extractor.fbank_std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="video length")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--audio-minutes", type=float, default=10.0)
    parser.add_argument("--no-video", action="store_true", help="audio rows only (writing the video takes minutes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = (
            ([] if args.no_video else bench_video(args, Path(tmp)))
            + bench_audio(args, Path(tmp))
            + bench_short_wav(Path(tmp))
        )
    print(f"machine: {platform.processor() or platform.machine()}, PyAV {av.__version__}\n")
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
