"""Media loading (modeling_unimoe/media_unimoe.py) on real files written by the tests.

References are independent of the loader: analytic sines (downmix + resampling), the frame index
each synthetic video frame spells in black/white blocks, quadrant colours of a pattern image
rotated with numpy, and a local HTTP server for URLs (127.0.0.1 only, no network).
"""

import base64
import http.server
import io
import os
import struct
import threading
import time
import wave as stdlib_wave
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_unimoe import media_unimoe
from modeling_unimoe.media_unimoe import (
    MediaError,
    load_audio,
    load_image,
    load_video,
    sample_frame_indices,
)
from unimoe_processing.synthetic_media import (
    _audio_stream,
    _encode_audio,
    frame_index_of,
    image_bytes,
    index_frame,
    pattern_image,
    sine_wave,
    write_audio,
    write_image,
    write_video,
)

SR = 16000
QUADRANT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # TL, TR, BL, BR of pattern_image


def quadrant_colours(image: np.ndarray) -> list[tuple[int, ...]]:
    h, w = image.shape[:2]
    centres = [(h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)]
    return [tuple(int(v) for v in image[y, x]) for y, x in centres]


def assert_colours_close(actual, expected, tol=40):
    for got, want in zip(actual, expected):
        assert max(abs(a - b) for a, b in zip(got, want)) <= tol, (actual, expected)


def tone_amplitude(x: np.ndarray, frequency: float, sr: int = SR) -> float:
    """Amplitude of a sine at `frequency` by projection on sin/cos (least squares)."""
    t = np.arange(len(x)) / sr
    basis = np.stack([np.sin(2 * np.pi * frequency * t), np.cos(2 * np.pi * frequency * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x.astype(np.float64), rcond=None)
    return float(np.hypot(*coef))


# ------------------------------------------------------------------------------ local server


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(2.0)  # longer than the client's timeout in the test; bounded
        return super().do_GET()

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the timed-out client of /slow has hung up: a broken pipe is expected


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    httpd = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_lossless_audio_is_downmixed_and_resampled_exactly(tmp_path, ext):
    # Stereo 44.1 kHz: left 300 Hz, right 600 Hz. Mono at 16 kHz is their mean (librosa.to_mono).
    wave = sine_wave(1.0, 44100, 300.0, channels=2, amplitude=0.4)
    x = load_audio(write_audio(tmp_path / f"a{ext}", wave, 44100))
    t = np.arange(SR) / SR
    reference = 0.2 * np.sin(2 * np.pi * 300 * t) + 0.2 * np.sin(2 * np.pi * 600 * t)
    assert x.dtype == np.float32 and x.shape == (SR,)
    np.testing.assert_allclose(x[200:-200], reference[200:-200], atol=2e-3)


@pytest.mark.parametrize("ext", [".mp3", ".ogg", ".opus", ".m4a"])
def test_lossy_audio_keeps_both_channels_tones(tmp_path, ext):
    wave = sine_wave(1.0, 44100, 300.0, channels=2, amplitude=0.4)
    x = load_audio(write_audio(tmp_path / f"a{ext}", wave, 44100))
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - SR) < 0.1 * SR  # codecs add priming/padding samples
    # Encoder delay shifts the phase, not the amplitude: each tone at half amplitude after the mean.
    assert tone_amplitude(x, 300) == pytest.approx(0.2, rel=0.15)
    assert tone_amplitude(x, 600) == pytest.approx(0.2, rel=0.15)
    assert tone_amplitude(x, 1000) < 0.01


def _ffmpeg_decode(path: Path, target_rate: int = SR) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return media_unimoe._decode_audio_stream(container, path, target_rate, None)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels,rate", [(1, SR), (2, 44100), (3, SR)])
def test_pcm_wav_is_read_without_ffmpeg_bit_for_bit(tmp_path, width, channels, rate):
    # Random bytes cover every sample value, extremes included; FFmpeg's decode is the reference.
    path = tmp_path / "a.wav"
    with stdlib_wave.open(str(path), "wb") as w:
        w.setnchannels(channels), w.setsampwidth(width), w.setframerate(rate)
        w.writeframes(np.random.default_rng(width).bytes(3000 * channels * width))
    fast = media_unimoe._read_pcm_wav(str(path), path, SR, None)
    assert fast is not None and fast.dtype == np.float32
    np.testing.assert_array_equal(fast, _ffmpeg_decode(path))
    np.testing.assert_array_equal(load_audio(path), fast)
    np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes())), fast)


def test_other_wavs_go_to_ffmpeg(tmp_path):
    import av

    tone = np.asarray(sine_wave(0.5, SR, 440.0), np.float32).reshape(-1)
    with av.open(str(tmp_path / "f.wav"), mode="w", format="wav") as container:  # IEEE float samples
        _encode_audio(container, _audio_stream(container, "pcm_f32le", SR, 1), tone[None, :], SR)
    assert media_unimoe._read_pcm_wav(str(tmp_path / "f.wav"), "f.wav", SR, None) is None
    np.testing.assert_array_equal(load_audio(tmp_path / "f.wav"), tone)
    flac = write_audio(tmp_path / "a.flac", tone)
    assert media_unimoe._read_pcm_wav(str(flac), "a.flac", SR, None) is None
    with pytest.raises(MediaError, match="a.wav': audio is 3 s long, more than the maximum of 2 s"):
        load_audio(write_audio(tmp_path / "a.wav", sine_wave(3.0)), max_seconds=2)


def test_audio_arrays_with_sampling_rate():
    stereo = sine_wave(0.5, 8000, 250.0, channels=2)
    expected = load_audio((stereo.mean(axis=0), 8000))
    t = np.arange(len(expected)) / SR
    np.testing.assert_allclose(
        expected[100:-100],
        (0.25 * np.sin(2 * np.pi * 250 * t) + 0.25 * np.sin(2 * np.pi * 500 * t))[100:-100],
        atol=2e-3,
    )
    for source in [
        (stereo, 8000),  # (channels, samples)
        (stereo.T.copy(), 8000),  # (samples, channels)
        {"array": stereo, "sampling_rate": 8000},
        (torch.from_numpy(stereo), 8000),
        ((stereo * 32767).astype(np.int16), 8000),  # PCM integers are scaled to [-1, 1)
    ]:
        np.testing.assert_allclose(load_audio(source), expected, atol=2e-4)
    np.testing.assert_allclose(load_audio(stereo, sampling_rate=8000), expected, atol=2e-4)


def test_bare_audio_array_needs_a_sampling_rate():
    with pytest.raises(MediaError, match="sampling rate"):
        load_audio(np.zeros(100, dtype=np.float32))


def test_audio_from_bytes_file_object_and_file_url(tmp_path):
    path = write_audio(tmp_path / "a.flac", sine_wave(0.5))
    reference = load_audio(path)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), reference)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(load_audio(f), reference)
    np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes())), reference)
    np.testing.assert_array_equal(load_audio(path.as_uri()), reference)
    np.testing.assert_array_equal(load_audio(str(path)), reference)


# ---------------------------------------------------------------------------------- video


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".avi", ".mkv"])
def test_video_frames_are_sampled_uniformly(tmp_path, ext):
    path = write_video(tmp_path / f"v{ext}", num_frames=40, fps=10)
    video = load_video(path, num_frames=8)
    assert video.frames.shape == (8, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.frame_indices == [0, 5, 10, 15, 20, 25, 30, 35]
    assert [frame_index_of(frame) for frame in video.frames] == video.frame_indices


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".avi", ".mkv"])
def test_video_soundtrack(tmp_path, ext):
    path = write_video(tmp_path / f"v{ext}", num_frames=30, fps=10, audio=sine_wave(3.0, SR, 440.0, channels=2))
    video = load_video(path, num_frames=4, with_audio=True)
    assert [frame_index_of(frame) for frame in video.frames] == [0, 7, 14, 21]
    assert abs(len(video.audio) - 3 * SR) < 0.05 * 3 * SR
    # mean of 440 Hz and 880 Hz channels, each at amplitude 0.5 -> 0.25 each
    assert tone_amplitude(video.audio, 440) == pytest.approx(0.25, rel=0.15)
    assert tone_amplitude(video.audio, 880) == pytest.approx(0.25, rel=0.15)
    # the same soundtrack is what load_audio reads from the video file
    np.testing.assert_allclose(load_audio(path), video.audio, atol=1e-6)


def test_official_frame_sampling_rule():
    assert sample_frame_indices(100, 8) == [0, 12, 24, 36, 48, 60, 72, 84]  # i * (100 // 8)
    assert sample_frame_indices(8, 8) == list(range(8))
    assert sample_frame_indices(5, 8) == [0, 0, 1, 1, 2, 3, 3, 4]  # short videos repeat frames


def test_short_video_repeats_frames(tmp_path):
    video = load_video(write_video(tmp_path / "v.mp4", num_frames=5, fps=5), num_frames=8)
    assert [frame_index_of(frame) for frame in video.frames] == [0, 0, 1, 1, 2, 3, 3, 4]


class _CountingContainer:
    """Wraps a PyAV container and counts the frames its decoder hands out."""

    def __init__(self, container):
        self.container, self.decoded = container, 0

    def seek(self, *args, **kwargs):
        return self.container.seek(*args, **kwargs)

    def demux(self, *args, **kwargs):
        return self.container.demux(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self.container.decode(*args, **kwargs):
            self.decoded += 1
            yield frame


def test_video_is_read_by_seeking_not_by_decoding_everything(tmp_path, monkeypatch):
    import av

    path = write_video(tmp_path / "long.mp4", num_frames=800, fps=25, gop_size=25)
    counters = []
    original = media_unimoe._decode_frames_by_seeking

    def counting(container, *args):
        counter = _CountingContainer(container)
        counters.append(counter)
        return original(counter, *args)

    monkeypatch.setattr(media_unimoe, "_decode_frames_by_seeking", counting)
    video = load_video(path, num_frames=8)
    assert [frame_index_of(frame) for frame in video.frames] == [i * 100 for i in range(8)]
    # each target lies on a keyframe here: a few frames per target, far from all 800
    assert counters[0].decoded <= 8 * 25
    # targets 100 frames apart in GOPs of 250: decode on instead of seeking back, no frame twice
    counters.clear()
    sparse = write_video(tmp_path / "sparse.mp4", num_frames=800, fps=25, gop_size=250)
    assert [frame_index_of(f) for f in load_video(sparse, num_frames=8).frames] == [i * 100 for i in range(8)]
    assert counters[0].decoded <= 701
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 800


def test_in_memory_videos():
    frames = [index_frame(i) for i in range(16)]
    expected = [0, 2, 4, 6, 8, 10, 12, 14]
    for source in (frames, [Image.fromarray(f) for f in frames], np.stack(frames), torch.from_numpy(np.stack(frames))):
        video = load_video(source, num_frames=8)
        assert video.frames.shape == (8, 48, 64, 3)
        assert [frame_index_of(frame) for frame in video.frames] == expected


# --------------------------------------------------------------------------------- images


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".gif", ".bmp", ".tiff"])
def test_image_formats(tmp_path, ext):
    image = load_image(write_image(tmp_path / f"i{ext}"))
    assert image.mode == "RGB" and image.size == (64, 48)
    assert_colours_close(quadrant_colours(np.asarray(image)), QUADRANT_COLOURS)


@pytest.mark.parametrize("orientation, k", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, k):
    # EXIF 3 = rotate 180, 6 = rotate 90 clockwise, 8 = rotate 90 counter-clockwise for display.
    image = load_image(write_image(tmp_path / "i.jpg", exif_orientation=orientation))
    expected = np.rot90(pattern_image(), k=k)
    assert image.size == (expected.shape[1], expected.shape[0])
    assert_colours_close(quadrant_colours(np.asarray(image)), quadrant_colours(expected))


def test_alpha_palette_grayscale_cmyk_are_rgb(tmp_path):
    rgba = np.zeros((48, 64, 4), dtype=np.uint8)
    rgba[..., :3] = pattern_image()
    rgba[..., 3] = 255
    rgba[:24, :32, 3] = 0  # transparent top-left -> white
    image = np.asarray(load_image(write_image(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))))
    assert_colours_close(quadrant_colours(image), [(255, 255, 255), *QUADRANT_COLOURS[1:]], tol=0)
    la = np.asarray(load_image(Image.fromarray(rgba).convert("LA")))
    assert quadrant_colours(la)[0] == (255, 255, 255)
    palette = np.asarray(load_image(write_image(tmp_path / "p.png", mode="P")))
    assert_colours_close(quadrant_colours(palette), QUADRANT_COLOURS, tol=0)
    gray = np.asarray(load_image(write_image(tmp_path / "l.png", mode="L")))
    assert gray.shape == (48, 64, 3) and (gray[..., 0] == gray[..., 2]).all()
    cmyk = np.asarray(load_image(write_image(tmp_path / "c.jpg", mode="CMYK")))
    assert_colours_close(quadrant_colours(cmyk), QUADRANT_COLOURS, tol=60)
    binary = np.asarray(load_image(write_image(tmp_path / "b.png", mode="1")))
    assert set(np.unique(binary)) <= {0, 255}


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)  # a 16-bit grayscale PNG
    image = np.asarray(load_image(path))
    np.testing.assert_array_equal(image[0, :, 0], [0, 64, 128, 255])
    np.testing.assert_array_equal(np.asarray(load_image(values))[0, :, 1], [0, 64, 128, 255])


def test_image_inputs(tmp_path, server):
    root, url = server
    path = write_image(tmp_path / "i.png")
    (root / "i.png").write_bytes(path.read_bytes())
    reference = np.asarray(load_image(path))
    pattern = pattern_image()
    sources = [
        str(path),
        path.as_uri(),
        path.read_bytes(),
        io.BytesIO(path.read_bytes()),
        Image.fromarray(pattern),
        pattern,
        torch.from_numpy(pattern).permute(2, 0, 1).float() / 255,  # (C, H, W) in [0, 1]
        "data:image/png;base64," + base64.b64encode(image_bytes()).decode(),
        f"{url}/i.png",
    ]
    for source in sources:
        np.testing.assert_array_equal(np.asarray(load_image(source)), reference)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(np.asarray(load_image(f)), reference)


def test_urls_for_audio_and_video(server, tmp_path):
    root, url = server
    write_audio(root / "a.mp3", sine_wave(1.0))
    write_video(root / "v.webm", num_frames=16, fps=8, audio=sine_wave(2.0))
    assert tone_amplitude(load_audio(f"{url}/a.mp3"), 440) == pytest.approx(0.5, rel=0.15)
    video = load_video(f"{url}/v.webm", num_frames=4, with_audio=True)
    assert [frame_index_of(f) for f in video.frames] == [0, 4, 8, 12]
    assert video.audio is not None and abs(len(video.audio) - 2 * SR) < 0.1 * SR


def test_url_errors_do_not_hang(server):
    _, url = server
    with pytest.raises(MediaError, match="HTTP 404"):
        load_image(f"{url}/missing.png")
    start = time.monotonic()
    with pytest.raises(MediaError, match="could not download"):
        load_audio(f"{url}/slow/a.mp3", timeout=0.3)
    assert time.monotonic() - start < 1.5


# --------------------------------------------------------------------------------- errors


def _png_with_size(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR claims `width` x `height` (CRC fixed), like a bomb's header."""
    data = bytearray(image_bytes(np.zeros((2, 2, 3), dtype=np.uint8)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(MediaError, match="decompression bomb"):
        load_image(_png_with_size(30000, 30000))  # 900 Mpx header, 70-byte file
    with pytest.raises(MediaError, match="max_pixels=100"):
        load_image(image_bytes(), max_pixels=100)


def _truncate(path: Path) -> Path:
    out = path.with_name("cut_" + path.name)
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".ogg", ".m4a"])
def test_truncated_audio(tmp_path, ext):
    path = _truncate(write_audio(tmp_path / f"a{ext}", sine_wave(4.0)))
    with pytest.raises(MediaError, match=f"cut_a{ext}.*(truncated|decode)"):
        load_audio(path)


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".avi", ".mkv"])
def test_truncated_video(tmp_path, ext):
    path = _truncate(write_video(tmp_path / f"v{ext}", num_frames=40, fps=10))
    with pytest.raises(MediaError, match=f"cut_v{ext}"):
        load_video(path)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_image(tmp_path, ext):
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    path = _truncate(write_image(tmp_path / f"i{ext}", noise))
    with pytest.raises(MediaError, match="truncated"):
        load_image(path)


@pytest.mark.parametrize("loader", [load_image, load_audio, load_video])
def test_missing_empty_and_corrupt_files(tmp_path, loader):
    with pytest.raises(MediaError, match="nope.bin': file not found"):
        loader(tmp_path / "nope.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(MediaError, match="empty.bin': empty file"):
        loader(tmp_path / "empty.bin")
    with pytest.raises(MediaError, match="empty bytes"):
        loader(b"")
    (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MediaError, match="noise.bin': (not an image|cannot decode)"):
        loader(tmp_path / "noise.bin")
    with pytest.raises(MediaError, match="not a regular file"):
        loader(tmp_path)


def test_wrong_kind_of_file(tmp_path):
    wav = write_audio(tmp_path / "a.wav", sine_wave(0.5))
    silent = write_video(tmp_path / "silent.mp4", num_frames=8)
    with pytest.raises(MediaError, match="a.wav': not an image"):
        load_image(wav)
    with pytest.raises(MediaError, match="a.wav': no video stream"):
        load_video(wav)
    with pytest.raises(MediaError, match="silent.mp4': no audio stream"):
        load_audio(silent)
    with pytest.raises(MediaError, match="silent.mp4': no audio stream"):
        load_video(silent, with_audio=True)


def test_audio_longer_than_the_maximum(tmp_path):
    path = write_audio(tmp_path / "a.flac", sine_wave(3.0))
    with pytest.raises(MediaError, match="a.flac': audio is 3 s long, more than the maximum of 2 s"):
        load_audio(path, max_seconds=2)
    with pytest.raises(MediaError, match="more than the maximum of 2 s"):
        load_audio((np.zeros(3 * SR, np.float32), SR), max_seconds=2)
    assert len(load_audio(path, max_seconds=3)) == 3 * SR


def test_bad_arrays():
    with pytest.raises(MediaError, match="NaN"):
        load_audio((np.full(10, np.nan, np.float32), SR))
    with pytest.raises(MediaError, match="empty audio"):
        load_audio((np.zeros(0, np.float32), SR))
    with pytest.raises(MediaError, match="channels"):
        load_image(np.zeros((5, 5, 7), np.uint8))
    with pytest.raises(MediaError, match="unsupported media input type"):
        load_image(12345)


def test_errors_are_value_errors():
    assert issubclass(MediaError, ValueError)
    assert os.path.basename(media_unimoe.__file__) == "media_unimoe.py"
