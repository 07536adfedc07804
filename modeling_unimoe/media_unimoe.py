"""Media loading for Uni-MoE: images (Pillow), audio and video (PyAV, i.e. FFmpeg).

A media item may be a local path, a `file://`, `http(s)://` or `data:` URL, raw bytes, a binary
file object, an in-memory object (PIL image, numpy array / torch tensor, list of frames), or for
audio an `(array, sampling_rate)` pair / `{"array": ..., "sampling_rate": ...}` dict (the
`datasets` layout). Every failure is a `MediaError` (a `ValueError`) that names the item and the
reason, raised before any model work.

This file travels with every saved checkpoint (remote code): PyAV and soxr are imported inside
the functions that need them, so image-only users need neither.
"""

import bisect
import io
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
import wave
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_transforms import convert_to_rgb

SAMPLING_RATE = 16000
# Pillow's own decompression-bomb threshold (about 89.5 megapixels).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# A decoded stream may fall short of the duration its header declares by this much (container
# rounding, encoder delay) before the file counts as truncated.
_TRUNCATION_SLACK_S = 0.25
_TRUNCATION_SLACK_RATIO = 0.05


class MediaError(ValueError):
    """A media item that cannot be used; the message names the item and the reason."""


@dataclass
class LoadedVideo:
    """Frames sampled from a video, plus its soundtrack when asked for.

    frames: uint8 (num_frames, height, width, 3) RGB.
    frame_indices: index of each returned frame in the source (None for in-memory frames).
    audio: float32 mono waveform at `SAMPLING_RATE`, or None.
    """

    frames: np.ndarray
    frame_indices: list[int] | None = None
    fps: float | None = None
    audio: np.ndarray | None = None


def describe_source(source: Any) -> str:
    """A short human name for a media item, used in error messages."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith("data:"):
            return "'data: URL'"
        if "://" in text:
            return repr(text)
        return repr(os.path.basename(text) or text)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        return repr(os.path.basename(name)) if isinstance(name, str) else "<file object>"
    if hasattr(source, "shape"):
        return f"<{type(source).__name__} of shape {tuple(source.shape)}>"
    if isinstance(source, (tuple, dict)):
        return f"<{type(source).__name__} audio>"
    if isinstance(source, list):
        return f"<list of {len(source)} frames>"
    return f"<{type(source).__name__}>"


def _fail(source: Any, reason: str) -> MediaError:
    return MediaError(f"{describe_source(source)}: {reason}")


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _too_long(source: Any, seconds: float, max_seconds: float, at_least: bool = False) -> MediaError:
    length = f"at least {_seconds(seconds)}" if at_least else _seconds(seconds)
    return _fail(source, f"audio is {length} s long, more than the maximum of {_seconds(max_seconds)} s")


def _fetch_url(url: str, timeout: float | None, max_bytes: int | None) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "unimoe-processor"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(max_bytes + 1 if max_bytes else -1)
    except urllib.error.HTTPError as err:
        raise _fail(url, f"HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise _fail(url, f"could not download ({reason}; timeout={timeout}s)") from err
    if max_bytes and len(data) > max_bytes:
        raise _fail(url, f"download larger than {max_bytes} bytes")
    return data


def _decode_data_url(url: str) -> bytes:
    import base64

    header, _, payload = url.partition(",")
    try:
        return base64.b64decode(payload) if header.endswith(";base64") else urllib.parse.unquote_to_bytes(payload)
    except ValueError as err:
        raise _fail(url, f"malformed data: URL ({err})") from err


def open_source(source: Any, *, timeout: float | None = 10.0, max_bytes: int | None = None) -> str | BinaryIO:
    """Resolves a file-like media item to a local path or a seekable binary stream.

    Raises `MediaError` for a missing or empty file, an unreachable URL or empty bytes.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        if source.startswith(("http://", "https://")):
            source = _fetch_url(source, timeout, max_bytes)
        elif source.startswith("data:"):
            source = _decode_data_url(source)
        else:
            path = (
                urllib.request.url2pathname(urllib.parse.urlparse(source).path)
                if source.startswith("file://")
                else source
            )
            if not os.path.exists(path):
                raise _fail(source, f"file not found ({path})")
            if not os.path.isfile(path):
                raise _fail(source, f"not a regular file ({path})")
            if os.path.getsize(path) == 0:
                raise _fail(source, "empty file")
            return path
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise _fail(source, "empty bytes")
        return io.BytesIO(bytes(source))
    if hasattr(source, "read"):
        seekable = getattr(source, "seekable", lambda: False)()
        stream = source if seekable else io.BytesIO(source.read())
        start = stream.tell()
        empty = stream.read(1) == b""
        stream.seek(start)
        if empty:
            raise _fail(source, "empty file object")
        return stream
    raise _fail(source, f"unsupported media input type {type(source).__name__}")


def _rewind(stream: str | BinaryIO) -> str | BinaryIO:
    if not isinstance(stream, str):
        stream.seek(0)
    return stream


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu().float().numpy() if array.is_floating_point() else array.detach().cpu().numpy()
    return np.asarray(array)


# --------------------------------------------------------------------------------------- images


def _image_from_array(array: np.ndarray, source: Any) -> Image.Image:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise _fail(source, f"an image array must be (H, W), (H, W, C) or (C, H, W), got shape {array.shape}")
    if array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (1, 3, 4):
        raise _fail(source, f"an image array needs 1, 3 or 4 channels, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise _fail(source, "image array has NaN or infinite values")
        # Floats are taken as [0, 1] intensities, the torchvision/PIL-to-tensor convention.
        array = np.clip(np.rint(array * 255.0), 0, 255)
    elif array.dtype == np.uint16:
        array = np.rint(array / 257.0)
    array = np.ascontiguousarray(array.astype(np.uint8))
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _sixteen_bit_to_8(image: Image.Image) -> Image.Image:
    # Pillow's "I;16"/"I" -> "L" conversion clips at 255 instead of scaling.
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F" and array.size and array.max() <= 1.0:
        array = array * 255.0
    elif image.mode != "F":
        array = array / 257.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied; alpha composited on white; palette, grayscale, CMYK and 16-bit
    images converted to 8-bit RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _sixteen_bit_to_8(image)
    if image.mode == "RGB":
        return image
    return Image.fromarray(convert_to_rgb(image, return_numpy=True))


def load_image(
    source: Any, *, timeout: float | None = 10.0, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Loads one image as an RGB PIL image (decoded fully, so truncation is caught here)."""
    if isinstance(source, Image.Image):
        image = source
    elif hasattr(source, "shape") and not hasattr(source, "read"):
        image = _image_from_array(_as_numpy(source), source)
    else:
        stream = open_source(source, timeout=timeout)
        try:
            # Pillow warns above MAX_IMAGE_PIXELS and raises at twice that; we check the header
            # size ourselves against `max_pixels` before decoding anything.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(stream)
                if max_pixels is not None and image.width * image.height > max_pixels:
                    raise _fail(
                        source,
                        f"image of {image.width}x{image.height} pixels exceeds max_pixels={max_pixels} "
                        "(possible decompression bomb)",
                    )
                image.load()
        except Image.DecompressionBombError as err:
            raise _fail(source, f"decompression bomb ({err})") from err
        except UnidentifiedImageError as err:
            raise _fail(source, "not an image (unrecognised or corrupt image data)") from err
        except (OSError, SyntaxError, ValueError) as err:
            if isinstance(err, MediaError):
                raise
            raise _fail(source, f"corrupt or truncated image ({err})") from err
    if image.width == 0 or image.height == 0:
        raise _fail(source, f"image has zero size {image.size}")
    try:
        return to_rgb(image)
    except (OSError, ValueError) as err:
        raise _fail(source, f"cannot convert image mode {image.mode} to RGB ({err})") from err


# ---------------------------------------------------------------------------------------- audio


def _resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    if orig_rate == target_rate:
        return waveform.astype(np.float32, copy=False)
    try:
        import soxr
    except ImportError:
        return _resample_with_pyav(waveform, orig_rate, target_rate)
    # soxr "HQ" is librosa 0.10's default resampler (`soxr_hq`), which the official code used.
    return soxr.resample(waveform.astype(np.float32, copy=False), orig_rate, target_rate, quality="HQ").astype(
        np.float32
    )


def _resample_with_pyav(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    import av

    frame = av.AudioFrame.from_ndarray(waveform.astype(np.float32)[None, :], format="flt", layout="mono")
    frame.sample_rate = orig_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    parts = [out.to_ndarray().reshape(-1) for out in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _downmix(array: np.ndarray, source: Any) -> np.ndarray:
    if array.ndim == 1:
        return array
    if array.ndim != 2:
        raise _fail(source, f"an audio array must be (samples,) or (channels, samples), got shape {array.shape}")
    # The channel axis is the short one; librosa's to_mono averages channels.
    channel_axis = 0 if array.shape[0] <= array.shape[1] else 1
    return array.mean(axis=channel_axis)


def _audio_from_array(source: Any, sampling_rate: int | None, target_rate: int) -> np.ndarray:
    if isinstance(source, dict):
        array, rate = source.get("array"), source.get("sampling_rate")
    elif isinstance(source, tuple) and len(source) == 2:
        array, rate = source
    else:
        array, rate = source, sampling_rate
    if array is None:
        raise _fail(source, "audio dict has no 'array'")
    if rate is None:
        raise _fail(source, "an audio array needs its sampling rate: pass (array, sampling_rate) or sampling_rate=")
    array = _as_numpy(array)
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float64) / float(np.iinfo(array.dtype).max + 1)
    array = _downmix(array.astype(np.float64), source)
    if array.size == 0:
        raise _fail(source, "empty audio")
    if not np.isfinite(array).all():
        raise _fail(source, "audio has NaN or infinite values")
    return _resample(array.astype(np.float32), int(rate), target_rate)


def _declared_seconds(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base is microseconds
    return None


def _is_truncated(decoded_s: float, declared_s: float | None) -> bool:
    if declared_s is None:
        return False
    return declared_s - decoded_s > max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_RATIO * declared_s)


def _head_and_tail(stream: str | BinaryIO, tail_bytes: int = 65536) -> tuple[bytes, bytes, int]:
    if isinstance(stream, str):
        with open(stream, "rb") as f:
            return _head_and_tail(f, tail_bytes)
    position = stream.seek(0, io.SEEK_CUR)
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    head = stream.read(12)
    stream.seek(max(0, size - tail_bytes))
    tail = stream.read()
    stream.seek(position)
    return head, tail, size


def container_truncation(stream: str | BinaryIO) -> str | None:
    """Why a WAV or Ogg file is visibly cut short, or None. FFmpeg clips a WAV's duration to the
    bytes present and an Ogg file has no declared length, so decoding alone cannot tell."""
    head, tail, size = _head_and_tail(stream)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        declared = int.from_bytes(head[4:8], "little") + 8
        # 0 and 0xFFFFFFFF mark streamed WAVs that never got their size.
        if 44 <= declared < 0xFFFFFFFF and declared > size:
            return f"the WAV header declares {declared} bytes, the file has {size}"
    if head[:4] == b"OggS":
        last = tail.rfind(b"OggS")
        page = tail[last:] if last >= 0 else b""
        if len(page) < 27 or len(page) < 27 + page[26] + sum(page[27 : 27 + page[26]]):
            return "the last Ogg page is cut short"
        if not page[5] & 0x04:  # header_type flag 0x04: end of stream
            return "the Ogg stream ends without its end-of-stream page"
    return None


def _decode_audio_stream(container: Any, source: Any, target_rate: int, max_seconds: float | None) -> np.ndarray:
    import av

    if not container.streams.audio:
        raise _fail(source, "no audio stream")
    stream = container.streams.audio[0]
    declared = _declared_seconds(container, stream)
    if max_seconds is not None and declared is not None and declared > max_seconds + _TRUNCATION_SLACK_S:
        raise _too_long(source, declared, max_seconds)
    # Planar float at the source layout and rate: we average channels ourselves (as librosa).
    resampler = av.AudioResampler(format="fltp")
    parts, rate, total = [], None, 0
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            rate = out.sample_rate
            parts.append(out.to_ndarray())
            total += out.samples
        if max_seconds is not None and rate and total / rate > max_seconds + _TRUNCATION_SLACK_S:
            raise _too_long(source, total / rate, max_seconds, at_least=True)
    for out in resampler.resample(None):
        parts.append(out.to_ndarray())
        total += out.samples
    if total == 0:
        raise _fail(source, "no audio samples could be decoded (empty or corrupt stream)")
    rate = rate or stream.rate
    if _is_truncated(total / rate, declared):
        raise _fail(
            source, f"truncated audio: decoded {total / rate:.2f} s of the {declared:.2f} s the header declares"
        )
    waveform = np.concatenate(parts, axis=1).mean(axis=0)
    return _resample(waveform, rate, target_rate)


# Integer PCM sample width (bytes) -> (numpy dtype, offset, scale): FFmpeg's conversion to float
# (libswresample: (x - offset) * 2^-(bits - 1)); 24-bit samples are widened to int32 first.
_PCM_TO_FLOAT = {
    1: (np.uint8, 128, 2.0**-7),
    2: (np.dtype("<i2"), 0, 2.0**-15),
    3: (np.dtype("<i4"), 0, 2.0**-31),
    4: (np.dtype("<i4"), 0, 2.0**-31),
}


def _read_pcm_wav(
    stream: str | BinaryIO, source: Any, target_rate: int, max_seconds: float | None
) -> np.ndarray | None:
    """An integer-PCM WAV read with the standard library instead of FFmpeg: the same samples bit
    for bit, about 20x faster on a short clip (a training epoch reads thousands). None for any
    other file (float or compressed WAV, other containers, odd headers): FFmpeg decodes those."""
    try:
        with wave.open(_rewind(stream), "rb") as wav:
            channels, width, rate, frames = wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()
            if width not in _PCM_TO_FLOAT or not rate:
                return None
            if max_seconds is not None and frames / rate > max_seconds + _TRUNCATION_SLACK_S:
                raise _too_long(source, frames / rate, max_seconds)
            data = wav.readframes(frames)
    except (wave.Error, EOFError):
        return None
    if frames == 0 or len(data) != frames * channels * width:
        return None  # FFmpeg's errors name what is wrong
    dtype, offset, scale = _PCM_TO_FLOAT[width]
    if width == 3:
        widened = np.zeros((len(data) // 3, 4), np.uint8)
        widened[:, 1:] = np.frombuffer(data, np.uint8).reshape(-1, 3)
        data = widened.tobytes()
    samples = np.frombuffer(data, dtype).astype(np.float32)
    if offset:
        samples -= offset
    samples *= np.float32(scale)
    # (channels, samples), as FFmpeg's planar output, so the channel mean adds in the same order.
    planar = np.ascontiguousarray(samples.reshape(-1, channels).T)
    return _resample(planar.mean(axis=0), rate, target_rate)


def _decode_audio_file(stream: str | BinaryIO, source: Any, target_rate: int, max_seconds: float | None) -> np.ndarray:
    import av

    truncation = container_truncation(stream)
    if truncation is not None:
        raise _fail(source, f"truncated file: {truncation}")
    waveform = _read_pcm_wav(stream, source, target_rate, max_seconds)
    if waveform is not None:
        return waveform
    try:
        with av.open(_rewind(stream), mode="r") as container:
            return _decode_audio_stream(container, source, target_rate, max_seconds)
    except av.FFmpegError as err:
        raise _fail(source, f"cannot decode audio ({type(err).__name__}: {err})") from err


def load_audio(
    source: Any,
    *,
    sampling_rate: int | None = None,
    target_sampling_rate: int = SAMPLING_RATE,
    max_seconds: float | None = None,
    timeout: float | None = 10.0,
) -> np.ndarray:
    """Loads one audio item as a float32 mono waveform at `target_sampling_rate`.

    Files are decoded with PyAV (any container FFmpeg reads, including the soundtrack of a
    video; integer-PCM WAV is read directly, with the same result), downmixed by averaging
    channels and resampled with soxr. `sampling_rate` is the rate of a bare array. Audio longer
    than `max_seconds` is an error, checked from the header before decoding when the header has
    a duration.
    """
    if isinstance(source, (tuple, dict)) or (hasattr(source, "shape") and not hasattr(source, "read")):
        waveform = _audio_from_array(source, sampling_rate, target_sampling_rate)
        if max_seconds is not None and waveform.size > max_seconds * target_sampling_rate:
            raise _too_long(source, waveform.size / target_sampling_rate, max_seconds)
        return waveform
    waveform = _decode_audio_file(open_source(source, timeout=timeout), source, target_sampling_rate, max_seconds)
    if max_seconds is not None and waveform.size > (max_seconds + _TRUNCATION_SLACK_S) * target_sampling_rate:
        raise _too_long(source, waveform.size / target_sampling_rate, max_seconds)
    return waveform


# ---------------------------------------------------------------------------------------- video


def sample_frame_indices(total_frames: int, num_frames: int) -> list[int]:
    """The official demo's uniform sampling, `i * (total // n)` for i < n; shorter videos repeat
    frames (`floor(i * total / n)`)."""
    if total_frames <= 0:
        raise ValueError(f"total_frames must be positive, got {total_frames}")
    if total_frames >= num_frames:
        step = total_frames // num_frames
        return [i * step for i in range(num_frames)]
    return [i * total_frames // num_frames for i in range(num_frames)]


def _is_frame(item: Any) -> bool:
    return isinstance(item, Image.Image) or (hasattr(item, "shape") and len(item.shape) in (2, 3))


def is_frame_list(item: Any) -> bool:
    """True for an in-memory video: a list of frames or a (T, H, W, C) array / tensor."""
    if isinstance(item, (list, tuple)):
        return len(item) > 0 and all(_is_frame(frame) for frame in item)
    return hasattr(item, "shape") and len(item.shape) == 4


def _frames_from_memory(source: Any, num_frames: int) -> LoadedVideo:
    frames = list(source) if isinstance(source, (list, tuple)) else list(_as_numpy(source))
    if not frames:
        raise _fail(source, "video has no frames")
    indices = sample_frame_indices(len(frames), num_frames)
    rgb = [np.asarray(load_image(frames[i], max_pixels=None)) for i in indices]
    if len({frame.shape for frame in rgb}) != 1:
        raise _fail(source, f"video frames differ in size: {sorted({frame.shape for frame in rgb})}")
    return LoadedVideo(frames=np.stack(rgb), frame_indices=indices)


def _video_geometry(container: Any, stream: Any, source: Any) -> tuple[Fraction, int]:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise _fail(source, "video stream has no frame rate")
    total = stream.frames
    if not total:
        declared = _declared_seconds(container, stream)
        if not declared:
            raise _fail(source, "video stream declares neither a frame count nor a duration")
        total = max(1, int(round(declared * rate)))
    return Fraction(rate), int(total)


def _keyframe_pts(container: Any, stream: Any) -> list[int]:
    """Keyframe timestamps from the packets alone: demuxing reads the file, it decodes nothing."""
    return sorted(p.pts for p in container.demux(stream) if p.is_keyframe and p.pts is not None)


def _decode_frames_by_seeking(container: Any, stream: Any, source: Any, targets: list[int]) -> list[np.ndarray]:
    """The first frame at or after each (non-decreasing) target pts, as RGB.

    Seeks to the keyframe before a target only when that keyframe lies beyond the last decoded
    frame (otherwise decoding on is cheaper), so no frame is decoded twice and a long file is
    decoded only around its targets. Only the returned frames are converted to RGB.
    """
    keyframes = _keyframe_pts(container, stream)
    one_second = int(1.0 / stream.time_base)  # without keyframe flags: seek when a second away
    slack = max(one_second // 2, 1)
    frames, decoder, last, last_pts, last_rgb = [], None, None, None, None
    for target in targets:
        if last_pts is None or target > last_pts:
            before = bisect.bisect_right(keyframes, target) - 1
            keyframe = keyframes[before] if before >= 0 else None
            seek = decoder is None or last_pts is None
            if not seek:  # a keyframe past the last decoded frame makes the jump worth it
                seek = keyframe > last_pts if keyframe is not None else target > last_pts + one_second
            if seek:
                container.seek(target, stream=stream, backward=True, any_frame=False)
                decoder, last, last_pts = container.decode(stream), None, None
            while last_pts is None or last_pts < target:
                frame = next(decoder, None)
                if frame is None:
                    break
                last, last_pts, last_rgb = frame, frame.pts if frame.pts is not None else target, None
            if last is None or last_pts < target - slack:
                raise _fail(source, f"no frame could be decoded at pts {target} (truncated or corrupt video)")
        if last_rgb is None:
            last_rgb = last.to_ndarray(format="rgb24")
        frames.append(last_rgb)
    return frames


def load_video(
    source: Any,
    *,
    num_frames: int = 8,
    with_audio: bool = False,
    max_audio_seconds: float | None = None,
    timeout: float | None = 10.0,
) -> LoadedVideo:
    """Samples `num_frames` RGB frames uniformly (official rule, `sample_frame_indices`) by seeking,
    never decoding a whole long file. With `with_audio`, also returns the soundtrack as a 16 kHz
    mono waveform (an error if the file has no audio stream)."""
    if is_frame_list(source):
        if with_audio:
            raise _fail(source, "an in-memory list of frames has no soundtrack")
        return _frames_from_memory(source, num_frames)
    import av

    stream_or_path = open_source(source, timeout=timeout)
    try:
        with av.open(stream_or_path, mode="r") as container:
            if not container.streams.video:
                raise _fail(source, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate, total = _video_geometry(container, stream, source)
            indices = sample_frame_indices(total, num_frames)
            start = stream.start_time or 0
            targets = [start + int(round(Fraction(i) / rate / stream.time_base)) for i in indices]
            if with_audio and not container.streams.audio:
                raise _fail(source, "no audio stream")
            frames = _decode_frames_by_seeking(container, stream, source, targets)
    except av.FFmpegError as err:
        raise _fail(source, f"cannot decode video ({type(err).__name__}: {err})") from err
    # A fresh demuxer for the soundtrack: after a seek, decoders may not drop codec priming.
    audio = _decode_audio_file(stream_or_path, source, SAMPLING_RATE, max_audio_seconds) if with_audio else None
    return LoadedVideo(frames=np.stack(frames), frame_indices=indices, fps=float(rate), audio=audio)


__all__ = [
    "LoadedVideo",
    "MediaError",
    "describe_source",
    "is_frame_list",
    "load_audio",
    "load_image",
    "load_video",
    "open_source",
    "sample_frame_indices",
    "to_rgb",
]
