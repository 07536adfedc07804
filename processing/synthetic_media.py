"""Synthetic media written with PyAV and Pillow, for tests, benchmarks and demos (no downloads).

Every writer produces a real file in a real container/codec, so readers are exercised exactly as
on user media. Video frames carry their own index as a 4x4 grid of black/white blocks (16 bits),
which survives lossy coding, so a test can tell which frames a reader returned
(`frame_index_of`).
"""

import io
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# extension -> (container format, audio codec)
AUDIO_FORMATS = {
    ".wav": ("wav", "pcm_s16le"),
    ".flac": ("flac", "flac"),
    ".mp3": ("mp3", "libmp3lame"),
    ".ogg": ("ogg", "libopus"),
    ".opus": ("ogg", "libopus"),
    ".m4a": ("mp4", "aac"),
}
# extension -> (container format, video codec, audio codec)
VIDEO_FORMATS = {
    ".mp4": ("mp4", "libx264", "aac"),
    ".webm": ("webm", "libvpx-vp9", "libopus"),
    ".avi": ("avi", "mpeg4", "pcm_s16le"),
    ".mkv": ("matroska", "libx264", "flac"),
}
_GRID = 4  # frame index bits are a _GRID x _GRID block pattern


def sine_wave(
    seconds: float,
    sampling_rate: int = 16000,
    frequency: float = 440.0,
    channels: int = 1,
    amplitude: float = 0.5,
) -> np.ndarray:
    """A float32 (channels, samples) tone; channel c has frequency `frequency * (c + 1)`."""
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    return np.stack([amplitude * np.sin(2 * np.pi * frequency * (c + 1) * t) for c in range(channels)]).astype(
        np.float32
    )


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


def _encode_audio(container, stream, waveform: np.ndarray, sampling_rate: int) -> None:
    """Feeds a float (channels, samples) waveform through PyAV's resampler (to the stream's
    rate and sample format) and a FIFO (to the encoder's frame size)."""
    layout = _layout(waveform.shape[0])
    resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=stream.rate)
    fifo = av.AudioFifo()
    frame_size = stream.codec_context.frame_size or 1024
    source = av.AudioFrame.from_ndarray(np.ascontiguousarray(waveform, dtype=np.float32), format="fltp", layout=layout)
    source.sample_rate, source.pts, source.time_base = sampling_rate, 0, Fraction(1, sampling_rate)
    for frame in [*resampler.resample(source), *resampler.resample(None)]:
        fifo.write(frame)
    while fifo.samples:
        frame = fifo.read(min(frame_size, fifo.samples))
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _audio_stream(container, codec: str, sampling_rate: int, channels: int):
    rate = 48000 if codec == "libopus" else sampling_rate  # Opus runs at 48 kHz
    stream = container.add_stream(codec, rate=rate)
    stream.layout = _layout(channels)
    return stream


def write_audio(path: str | Path, waveform: np.ndarray, sampling_rate: int = 16000) -> Path:
    """Writes a (samples,) or (channels, samples) float waveform in [-1, 1]; the extension
    picks the container and codec (`AUDIO_FORMATS`). Opus files are written at 48 kHz."""
    path = Path(path)
    container_format, codec = AUDIO_FORMATS[path.suffix.lower()]
    waveform = np.atleast_2d(np.asarray(waveform, dtype=np.float32))
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = _audio_stream(container, codec, sampling_rate, waveform.shape[0])
        _encode_audio(container, stream, waveform, sampling_rate)
    return path


def index_frame(index: int, width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """An RGB uint8 frame whose 4x4 block grid spells `index` in binary (white = 1)."""
    bits = [(index >> b) & 1 for b in range(_GRID * _GRID)]
    grid = np.array(bits, dtype=np.uint8).reshape(_GRID, _GRID) * 255
    ys = np.arange(height) * _GRID // height
    xs = np.arange(width) * _GRID // width
    frame = grid[ys][:, xs]
    return np.repeat(frame[:, :, None], 3, axis=2)


def frame_index_of(frame: np.ndarray) -> int:
    """Reads back the index written by `index_frame` (from any RGB frame of any size)."""
    height, width = frame.shape[:2]
    gray = np.asarray(frame, dtype=np.float32).mean(axis=-1)
    index = 0
    for b in range(_GRID * _GRID):
        row, col = divmod(b, _GRID)
        y0, y1 = row * height // _GRID, (row + 1) * height // _GRID
        x0, x1 = col * width // _GRID, (col + 1) * width // _GRID
        cy, cx = (y1 - y0) // 4, (x1 - x0) // 4  # the block centre avoids ringing at edges
        if gray[y0 + cy : y1 - cy, x0 + cx : x1 - cx].mean() > 127:
            index |= 1 << b
    return index


def write_video(
    path: str | Path,
    num_frames: int = 24,
    fps: int = 8,
    width: int = 64,
    height: int = 48,
    audio: np.ndarray | None = None,
    sampling_rate: int = 16000,
    frames: Iterator[np.ndarray] | None = None,
    options: dict[str, str] | None = None,
    bit_rate: int | None = None,
    gop_size: int | None = None,
) -> Path:
    """Writes a video whose frame i is `index_frame(i)` (or the given `frames`), with an optional
    soundtrack (`audio`: (samples,) or (channels, samples) at `sampling_rate`). The extension
    picks container and codecs (`VIDEO_FORMATS`); `gop_size` sets the keyframe interval."""
    path = Path(path)
    container_format, video_codec, audio_codec = VIDEO_FORMATS[path.suffix.lower()]
    frames = frames if frames is not None else (index_frame(i, width, height) for i in range(num_frames))
    with av.open(str(path), mode="w", format=container_format) as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if bit_rate:
            video.bit_rate = bit_rate
        if gop_size:
            video.codec_context.gop_size = gop_size  # frames between keyframes
        video.options = {"preset": "ultrafast"} if video_codec == "libx264" else {}
        if video_codec == "libvpx-vp9":
            video.options = {"deadline": "realtime", "cpu-used": "8"}
        video.options.update(options or {})
        sound = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            sound = _audio_stream(container, audio_codec, sampling_rate, audio.shape[0])
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            _encode_audio(container, sound, audio, sampling_rate)
    return path


def pattern_image(width: int = 64, height: int = 48) -> np.ndarray:
    """An RGB uint8 image with a distinct colour per quadrant (orientation is visible)."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w] = (255, 0, 0)
    image[:h, w:] = (0, 255, 0)
    image[h:, :w] = (0, 0, 255)
    image[h:, w:] = (255, 255, 0)
    return image


def write_image(
    path: str | Path,
    image: np.ndarray | Image.Image | None = None,
    mode: str | None = None,
    exif_orientation: int | None = None,
) -> Path:
    """Writes `image` (default `pattern_image()`) converted to `mode`; the extension picks the
    format. `exif_orientation` stores an EXIF Orientation tag (JPEG, PNG, TIFF, WebP)."""
    path = Path(path)
    pil = image if isinstance(image, Image.Image) else Image.fromarray(pattern_image() if image is None else image)
    if mode is not None and pil.mode != mode:
        pil = pil.convert(mode)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    pil.save(path, **kwargs)
    return path


def image_bytes(image: np.ndarray | None = None, format: str = "PNG") -> bytes:
    """`pattern_image()` (or `image`) encoded in memory."""
    buffer = io.BytesIO()
    Image.fromarray(pattern_image() if image is None else image).save(buffer, format=format)
    return buffer.getvalue()


__all__ = [
    "AUDIO_FORMATS",
    "VIDEO_FORMATS",
    "frame_index_of",
    "image_bytes",
    "index_frame",
    "pattern_image",
    "sine_wave",
    "write_audio",
    "write_image",
    "write_video",
]
