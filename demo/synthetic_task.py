"""A small synthetic multimodal task in the official Uni-MoE JSON format, with real media files.

Every item is drawn from a seeded generator, so the same seed writes the same files:

| modality | media (written with Pillow / PyAV) | questions (answer set) |
|---|---|---|
| image | PNG, 1-4 same shapes in the quadrants of a dark square | colour (4), shape (4), count (4), where (4 quadrants, single shape) |
| video | MP4 (H.264), one shape crossing the frame | direction (4), colour (4), shape (4) |
| speech | WAV, 1-3 tone-coded "words" (two-formant syllables, 14 words: digits and four question words) | transcript, first word |
| audio | WAV, 1-4 bursts of one sound (tone, chord, noise, sweep) | kind (4), count (4), note of a tone (4), loudness (4) |
| mixed | PNG + WAV: a spoken question word about the image | the answer to the spoken question (16) |

The speech is synthetic, not human speech: each word is a 0.22-second syllable with two formant
frequencies of its own, so a Whisper-style log-mel front end sees a distinct spectral pattern per
word. Answers are single words or short phrases, so exact match is meaningful; every question
type has at least four possible answers (chance at most 25%; transcripts far less).

Splits (JSON lists of `{"id", "image"?, "video"?, "voice"?, "conversations", "modality",
"question_type"}`; media paths are relative to the JSON file's folder; each `<speech>` or
`<audio>` placeholder takes the next `voice` file in order):

- `stage1_captions.json`: per media item a caption and its slot words (connector alignment);
- `stage2_<modality>.json` for image, video, speech, audio: per-modality instructions;
- `stage3_mixed.json`: a mix of all four plus image+speech items;
- `test.json`: held-out items (media never used in training) with one question each;
- `pretrain_text.json`: every training record with each media item replaced by its slot words
  (`transcribe`: one word per media token, e.g. "redcirclenw emptyne emptysw redcirclese" for
  an image with red circles in the top-left and bottom-right quadrants), for the language model's text
  pre-training;
- `media_labels.json`: per training media file (stages 1-2), the labels encoder pre-training
  uses (image: the shape code of each quadrant; video: the same per frame; speech: word ids and
  onsets; audio: kind, note, loudness and burst onsets).
"""

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unimoe_processing.synthetic_media import write_audio, write_image, write_video

SAMPLING_RATE = 16000
MODALITIES = ("image", "video", "speech", "audio", "mixed")
SINGLE_MODALITIES = MODALITIES[:4]

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (230, 215, 40)}
SHAPES = ("circle", "square", "triangle", "cross")
COUNTS = ("one", "two", "three", "four")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
DIRECTIONS = ("left", "right", "up", "down")
SOUND_KINDS = ("tone", "chord", "noise", "sweep")
# Four pitch classes, each in its own octave (C4, E5, G6, B6) so they lie far apart on the mel scale.
NOTES = {"C": 261.63, "E": 659.26, "G": 1567.98, "B": 1975.53}
# RMS, 13 dB apart, one distinct word each. As "very loud" / "loud" and "quiet" / "very quiet",
# neighbours sharing a word, they were what the stage-1 connector confused most (`docs/quickstart.md`).
LOUDNESS = {"faint": 0.004, "soft": 0.018, "loud": 0.08, "booming": 0.35}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTION_WORDS = ("colour", "shape", "count", "where")
WORDS = DIGITS + QUESTION_WORDS
# Two formants per word: a 4 x 4 grid of (low, high) frequencies, 14 of 16 cells used.
_F1 = (300.0, 480.0, 700.0, 950.0)
_F2 = (1400.0, 1900.0, 2500.0, 3200.0)
FORMANTS = {word: (_F1[i // 4], _F2[i % 4]) for i, word in enumerate(WORDS)}

# Slot words: the text pre-training's stand-in for a media item, one word per media token (what
# the connector learns to produce in stage 1). Image: one word per quadrant, naming its content
# and the quadrant (a CLIP patch knows where it is: its position embedding); video: the same per
# frame; speech: the words then "silence"; audio: kind, note, loudness, count.
EMPTY = "empty"
QUADRANT_SUFFIXES = ("nw", "ne", "sw", "se")  # compass points of the quadrants, row-major
NO_NOTE = "nonote"
SILENCE = "silence"
SPEECH_SLOTS = 4
AUDIO_SLOTS = 4
VIDEO_FRAMES = 4


def quadrant_word(quadrant: int, colour: str | None = None, shape: str | None = None) -> str:
    """The slot word of one quadrant: e.g. "redcirclenw", or "emptyse" without a shape."""
    content = EMPTY if shape is None else f"{colour}{shape}"
    return content + QUADRANT_SUFFIXES[quadrant]


def quadrant_code(colour: str, shape: str) -> int:
    """0 is an empty quadrant; 1 + colour * 4 + shape otherwise."""
    return 1 + list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape)


QUADRANT_WORDS = tuple(
    quadrant_word(q, c, s) for q in range(4) for c, s in [(None, None), *((c, s) for c in COLOURS for s in SHAPES)]
)

WORD_SECONDS, WORD_STRIDE = 0.22, 0.3
BURST_SECONDS, BURST_STRIDE = 0.15, 0.27

QUESTIONS = {
    "image": {
        "colour": ("What colour is the shape?", "What colour are the shapes in the picture?"),
        "shape": ("What shape is shown?", "Which shape do you see?"),
        "count": ("How many shapes are there?", "Count the shapes."),
        "where": ("Where is the shape?", "In which corner is the shape?"),
    },
    "video": {
        "direction": ("Which way does the shape move?", "In which direction is the shape moving?"),
        "colour": ("What colour is the moving shape?", "What colour is the shape in the video?"),
        "shape": ("What shape is moving?", "Which shape moves in the video?"),
    },
    "speech": {
        "transcript": ("What does the speaker say?", "Transcribe the speech."),
        "first word": ("What is the first word?", "Which word is spoken first?"),
    },
    "audio": {
        "kind": ("What kind of sound is it?", "Which sound do you hear?"),
        "count": ("How many bursts are there?", "How many times does the sound play?"),
        "note": ("Which note is played?", "What is the pitch of the tone?"),
        "loudness": ("How loud is the sound?", "Is the sound loud or quiet?"),
    },
    "mixed": {"spoken question": ("Answer the spoken question about the image.",)},
}
CAPTION_PROMPTS = {
    "image": "Describe the image briefly.",
    "video": "Describe the video briefly.",
    "speech": "Repeat what the speaker says.",
    "audio": "Describe the sound briefly.",
}
# Stage 1 also pairs every caption item with its slot words (a word-by-word transcription).
TRANSCRIBE_PROMPTS = {
    "image": "List the quadrants.",
    "video": "List the quadrants of every frame.",
    "speech": "List the spoken words.",
    "audio": "List the kind, note, loudness and count of the sound.",
}
PLACEHOLDER = {"image": "<image>", "video": "<video>", "speech": "<speech>", "audio": "<audio>"}


@dataclass(frozen=True)
class TaskSizes:
    """Items per split and modality (each item is one media file with one conversation).

    `caption`: stage-1 captions per modality; `instruct`: stage-2 instructions per modality;
    `stage3`: stage-3 items per single modality; `mixed`: stage-3 image+speech items; `test`:
    held-out items per modality (mixed included). Stage-1 and stage-2 items share media; stage 3
    and the test split have their own.
    """

    caption: int = 200
    instruct: int = 400
    stage3: int = 200
    mixed: int = 300
    test: int = 80


@dataclass
class TaskFiles:
    """Paths of a generated task (all JSON files in `root`)."""

    root: Path
    stage1: Path
    stage2: dict[str, Path]
    stage3: Path
    test: Path
    pretrain_text: Path
    media_labels: Path
    text_corpus: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ images


def _jitter(rng: random.Random, value: int, spread: int) -> int:
    return value + rng.randint(-spread, spread)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], radius: float, fill) -> None:
    """Draws one filled shape of half-size `radius` around `centre`."""
    x, y = centre
    if shape == "circle":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
    elif shape == "square":
        draw.rectangle((x - radius, y - radius, x + radius, y + radius), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)], fill=fill)
    elif shape == "cross":
        arm = max(radius / 3, 1)
        draw.rectangle((x - radius, y - arm, x + radius, y + arm), fill=fill)
        draw.rectangle((x - arm, y - radius, x + arm, y + radius), fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def _colour(rng: random.Random, name: str) -> tuple[int, int, int]:
    return tuple(min(255, max(0, _jitter(rng, c, 15))) for c in COLOURS[name])


def _background(rng: random.Random, size: int) -> Image.Image:
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 40, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(noise)


def render_image(rng: random.Random, size: int, colour: str, shape: str, quadrants: list[int]) -> Image.Image:
    """`len(quadrants)` copies of a shape, one per listed quadrant (0 = top left, row-major)."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    half = size / 2
    for quadrant in quadrants:
        row, col = divmod(quadrant, 2)
        centre = (half * (col + 0.5) + rng.uniform(-1, 1), half * (row + 0.5) + rng.uniform(-1, 1))
        draw_shape(draw, shape, centre, half * rng.uniform(0.3, 0.38), _colour(rng, colour))
    return image


def video_frames(
    rng: random.Random, size: int, num_frames: int, colour: str, shape: str, direction: str
) -> tuple[list[np.ndarray], list[int]]:
    """Frames of one shape moving in `direction` from one quadrant to its neighbour: the first
    half of the frames drift through the start quadrant, the second half through the end one,
    so no frame cuts the shape across two quadrants. Returns the frames and the quadrant
    (0 = top left, row-major) of the shape in each frame."""
    half = size / 2
    radius = half * rng.uniform(0.3, 0.38)  # as in the images
    start_row, start_col = rng.randrange(2), rng.randrange(2)
    if direction in ("left", "right"):
        start_col = 0 if direction == "right" else 1
    else:
        start_row = 0 if direction == "down" else 1
    step = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[direction]
    fill = _colour(rng, colour)
    background = _background(rng, size)
    frames, quadrants = [], []
    per_half = max(1, num_frames // 2)
    for index in range(num_frames):
        moved = index >= per_half
        row, col = start_row + moved * step[0], start_col + moved * step[1]
        # Within a quadrant the shape drifts along the motion, from -1 to +1 px.
        drift = 2 * (index % per_half) / (per_half - 1) - 1 if per_half > 1 else 0.0
        x = half * (col + 0.5) + drift * step[1] + rng.uniform(-0.5, 0.5)
        y = half * (row + 0.5) + drift * step[0] + rng.uniform(-0.5, 0.5)
        frame = background.copy()
        draw_shape(ImageDraw.Draw(frame), shape, (x, y), radius, fill)
        frames.append(np.asarray(frame))
        quadrants.append(2 * row + col)
    return frames, quadrants


# ------------------------------------------------------------------------------------- sound


def _envelope(num_samples: int, ramp: int) -> np.ndarray:
    envelope = np.ones(num_samples, dtype=np.float32)
    ramp = min(ramp, num_samples // 2)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[num_samples - ramp :] = np.linspace(1.0, 0.0, ramp)
    return envelope


def speak_words(rng: random.Random, words: list[str]) -> tuple[np.ndarray, list[float]]:
    """Tone-coded "speech": word k is a two-formant syllable starting near `0.1 + k * 0.3` s.
    Returns the waveform and each word's onset in seconds."""
    np_rng = np.random.default_rng(rng.getrandbits(32))
    total = int(SAMPLING_RATE * (0.2 + WORD_STRIDE * len(words)))
    wave = 0.003 * np_rng.standard_normal(total).astype(np.float32)
    n = int(WORD_SECONDS * SAMPLING_RATE)
    t = np.arange(n) / SAMPLING_RATE
    onsets = []
    for k, word in enumerate(words):
        f1, f2 = (f * rng.uniform(0.98, 1.02) for f in FORMANTS[word])
        syllable = np.sin(2 * np.pi * f1 * t) + 0.6 * np.sin(2 * np.pi * f2 * t)
        syllable *= np.hanning(n) * rng.uniform(0.25, 0.35)
        offset = int(SAMPLING_RATE * (0.1 + WORD_STRIDE * k + rng.uniform(-0.02, 0.02)))
        wave[offset : offset + n] += syllable.astype(np.float32)
        onsets.append(offset / SAMPLING_RATE)
    return np.clip(wave, -1.0, 1.0), onsets


def _burst(np_rng: np.random.Generator, kind: str, frequency: float, num_samples: int) -> np.ndarray:
    t = np.arange(num_samples) / SAMPLING_RATE
    if kind == "tone":
        wave = np.sin(2 * np.pi * frequency * t)
    elif kind == "chord":  # major triad
        wave = sum(np.sin(2 * np.pi * frequency * ratio * t) for ratio in (1.0, 1.25, 1.5)) / 2.2
    elif kind == "noise":
        wave = np.clip(np_rng.standard_normal(num_samples) / 2.5, -1, 1)
    elif kind == "sweep":  # one octave up, phase-continuous
        instantaneous = frequency * 2 ** (t / t[-1])
        wave = np.sin(2 * np.pi * np.cumsum(instantaneous) / SAMPLING_RATE)
    else:
        raise ValueError(f"Unknown sound kind {kind!r}; expected one of {SOUND_KINDS}.")
    return wave.astype(np.float32)


def play_bursts(rng: random.Random, kind: str, note: str, count: int, loudness: str) -> tuple[np.ndarray, list[float]]:
    """`count` bursts of one sound at one loudness (RMS), about `BURST_STRIDE` s apart.
    Returns the waveform and each burst's onset in seconds."""
    np_rng = np.random.default_rng(rng.getrandbits(32))
    # Every clip lasts as long as four bursts need, so a count is a share of sounding time.
    total = int(SAMPLING_RATE * (0.25 + BURST_STRIDE * 4))
    wave = 0.0003 * np_rng.standard_normal(total).astype(np.float32)
    n = int(BURST_SECONDS * SAMPLING_RATE)
    rms = LOUDNESS[loudness] * rng.uniform(0.9, 1.1)
    onsets = []
    for k in range(count):
        burst = _burst(np_rng, kind, NOTES[note], n)
        burst *= rms / np.sqrt(np.mean(burst**2)) * _envelope(n, int(0.01 * SAMPLING_RATE))
        offset = int(SAMPLING_RATE * (0.1 + BURST_STRIDE * k + rng.uniform(-0.02, 0.02)))
        wave[offset : offset + n] += burst
        onsets.append(offset / SAMPLING_RATE)
    return np.clip(wave, -1.0, 1.0), onsets


# ------------------------------------------------------------------------------------- items


@dataclass
class _Item:
    """One media item: its attributes, its files and their text descriptions (in placeholder order)."""

    modality: str
    attributes: dict
    files: dict[str, str | list[str]]  # "image" / "video" / "voice" -> relative path(s)
    descriptions: list[str] = field(default_factory=list)


def _conversation(prompt: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]


def _media_prefix(modality: str) -> str:
    if modality == "mixed":
        return "<image>\n<speech>\n"
    return PLACEHOLDER[modality] + "\n"


def _record(item: _Item, item_id: str, question_type: str, prompt: str, answer: str) -> dict:
    record = {"id": item_id, **item.files}
    record["conversations"] = _conversation(_media_prefix(item.modality) + prompt, answer)
    record["modality"] = item.modality
    record["question_type"] = question_type
    return record


def text_twin(record: dict, descriptions: list[str]) -> dict:
    """The record with every media placeholder replaced by its item's slot words (`slot_text`)
    and no media: what the language model reads in text pre-training."""
    pieces = iter(descriptions)
    turns = [
        {"from": turn["from"], "value": re.sub(r"<(image|video|speech|audio)>", lambda _: next(pieces), turn["value"])}
        for turn in record["conversations"]
    ]
    return {
        "id": record["id"] + "-text",
        "conversations": turns,
        "modality": "text",
        "question_type": record["question_type"],
    }


def image_answers(attributes: dict) -> dict[str, str]:
    """Every question type an image item can answer, with its answer."""
    answers = {
        "colour": attributes["colour"],
        "shape": attributes["shape"],
        "count": COUNTS[len(attributes["quadrants"]) - 1],
    }
    if len(attributes["quadrants"]) == 1:
        answers["where"] = QUADRANTS[attributes["quadrants"][0]]
    return answers


def _answers(item: _Item) -> dict[str, str]:
    a = item.attributes
    if item.modality == "image":
        return image_answers(a)
    if item.modality == "video":
        return {"direction": a["direction"], "colour": a["colour"], "shape": a["shape"]}
    if item.modality == "speech":
        return {"transcript": " ".join(a["words"]), "first word": a["words"][0]}
    if item.modality == "audio":
        answers = {"kind": a["kind"], "count": COUNTS[a["count"] - 1], "loudness": a["loudness"]}
        if a["kind"] == "tone":
            answers["note"] = a["note"]
        return answers
    image = image_answers(a["image"])
    return {"spoken question": image[a["question"]]}


def describe(modality: str, a: dict) -> str:
    """A text description of one media item (its stage-1 caption)."""
    if modality == "image":
        count = len(a["quadrants"])
        noun = a["shape"] + ("es" if count > 1 and a["shape"] == "cross" else "s" if count > 1 else "")
        text = f"{COUNTS[count - 1]} {a['colour']} {noun}"
        return text + (f" at the {QUADRANTS[a['quadrants'][0]]}" if count == 1 else "")
    if modality == "video":
        return f"a {a['colour']} {a['shape']} moving {a['direction']}"
    if modality == "speech":
        return " ".join(a["words"])
    bursts = "burst" if a["count"] == 1 else "bursts"
    text = f"{COUNTS[a['count'] - 1]} {a['loudness']} {a['kind']} {bursts}"
    return text + (f" at {a['note']}" if a["kind"] != "noise" else "")


def transcribe(modality: str, a: dict) -> list[str]:
    """The slot words of one media item: one word per media token of the demo model."""
    if modality == "image":
        return [
            quadrant_word(q, a["colour"], a["shape"]) if q in a["quadrants"] else quadrant_word(q) for q in range(4)
        ]
    if modality == "video":
        return [
            quadrant_word(q, a["colour"], a["shape"]) if q == at else quadrant_word(q)
            for at in a["frame_quadrants"]
            for q in range(4)
        ]
    if modality == "speech":
        return a["words"] + [SILENCE] * (SPEECH_SLOTS - len(a["words"]))
    note = NO_NOTE if a["kind"] == "noise" else a["note"]
    return [a["kind"], note, a["loudness"], COUNTS[a["count"] - 1]]


def slot_components() -> dict[str, list[str]]:
    """Slot words that stand for several plain words: each quadrant word is its content and its
    quadrant ("redcirclenw" = red + circle + top + left), and "nonote" = none. Text pre-training
    embeds such a slot as its parts' embeddings summed, so what the LM learns about "red" holds in
    every quadrant and frame."""
    components = {}
    for q, quadrant in enumerate(QUADRANTS):
        components[quadrant_word(q)] = [EMPTY, *quadrant.split()]
        for colour in COLOURS:
            for shape in SHAPES:
                components[quadrant_word(q, colour, shape)] = [colour, shape, *quadrant.split()]
    components[NO_NOTE] = ["none"]
    return components


def slot_text(modality: str, a: dict) -> str:
    # The trailing space gives the bare "▁" that follows a placeholder run in the real prompt.
    return " ".join(transcribe(modality, a)) + " "


def caption(item: _Item) -> str:
    """The stage-1 caption of a single-modality item."""
    return describe(item.modality, item.attributes)


class _Writer:
    """Draws item attributes, writes their media under `root/media/<modality>/` and keeps
    per-file labels (`labels`, for encoder pre-training)."""

    def __init__(self, root: Path, rng: random.Random, image_size: int, video_frames: int):
        self.root, self.rng = root, rng
        self.image_size, self.video_frames = image_size, video_frames
        self.counter = 0
        self.labels: dict[str, dict] = {}

    def _path(self, modality: str, suffix: str) -> tuple[Path, str]:
        self.counter += 1
        relative = f"media/{modality}/{modality}_{self.counter:05d}{suffix}"
        (self.root / relative).parent.mkdir(parents=True, exist_ok=True)
        return self.root / relative, relative

    def _image_attributes(self, num_shapes: int | None = None) -> dict:
        rng = self.rng
        count = num_shapes or rng.randint(1, 4)
        quadrants = sorted(rng.sample(range(4), count))
        return {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES), "quadrants": quadrants}

    def _write_png(self, a: dict, modality: str = "image") -> str:
        path, relative = self._path(modality, ".png")
        write_image(path, render_image(self.rng, self.image_size, a["colour"], a["shape"], a["quadrants"]))
        # Per quadrant: 0 = empty, else 1 + colour * 4 + shape.
        code = 1 + list(COLOURS).index(a["colour"]) * len(SHAPES) + SHAPES.index(a["shape"])
        self.labels[relative] = {
            "modality": "image",
            "quadrants": [code if q in a["quadrants"] else 0 for q in range(4)],
        }
        return relative

    def _write_words(self, words: list[str], modality: str = "speech") -> str:
        path, relative = self._path(modality, ".wav")
        wave, onsets = speak_words(self.rng, words)
        write_audio(path, wave, SAMPLING_RATE)
        self.labels[relative] = {
            "modality": "speech",
            "words": [WORDS.index(word) for word in words],
            "onsets": onsets,
            "duration": WORD_SECONDS,
        }
        return relative

    def image(self) -> _Item:
        # Half the images hold a single shape, so "where" questions are common enough.
        a = self._image_attributes(1 if self.rng.random() < 0.5 else None)
        return _Item("image", a, {"image": self._write_png(a)}, [slot_text("image", a)])

    def video(self) -> _Item:
        rng = self.rng
        a = {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES), "direction": rng.choice(DIRECTIONS)}
        frames, a["frame_quadrants"] = video_frames(
            rng, self.image_size, self.video_frames, a["colour"], a["shape"], a["direction"]
        )
        path, relative = self._path("video", ".mp4")
        write_video(path, frames=iter(frames), fps=4, width=self.image_size, height=self.image_size)
        code = quadrant_code(a["colour"], a["shape"])
        self.labels[relative] = {
            "modality": "video",
            "frames": [[code if q == at else 0 for q in range(4)] for at in a["frame_quadrants"]],
        }
        return _Item("video", a, {"video": relative}, [slot_text("video", a)])

    def speech(self) -> _Item:
        words = [self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 3))]
        a = {"words": words}
        return _Item("speech", a, {"voice": [self._write_words(words)]}, [slot_text("speech", a)])

    def audio(self) -> _Item:
        rng = self.rng
        a = {
            "kind": rng.choice(SOUND_KINDS),
            "note": rng.choice(list(NOTES)),
            "count": rng.randint(1, 4),
            "loudness": rng.choice(list(LOUDNESS)),
        }
        path, relative = self._path("audio", ".wav")
        wave, onsets = play_bursts(rng, a["kind"], a["note"], a["count"], a["loudness"])
        write_audio(path, wave, SAMPLING_RATE)
        self.labels[relative] = {
            "modality": "audio",
            "kind": SOUND_KINDS.index(a["kind"]),
            "note": list(NOTES).index(a["note"]),
            "loudness": list(LOUDNESS).index(a["loudness"]),
            "onsets": onsets,
            "duration": BURST_SECONDS,
        }
        return _Item("audio", a, {"voice": [relative]}, [slot_text("audio", a)])

    def mixed(self) -> _Item:
        question = self.rng.choice(QUESTION_WORDS)
        image = self._image_attributes(1 if question == "where" else None)
        files = {"image": self._write_png(image, "mixed"), "voice": [self._write_words([question], "mixed")]}
        descriptions = [slot_text("image", image), slot_text("speech", {"words": [question]})]
        return _Item("mixed", {"image": image, "question": question}, files, descriptions)

    def make(self, modality: str) -> _Item:
        return getattr(self, modality)()


def _questions(rng: random.Random, item: _Item, item_id: str, how_many: int) -> list[dict]:
    """One record of an item with `how_many` question turns of different types (as many as it
    has, if fewer); the media placeholders open the first human turn."""
    answers = _answers(item)
    types = rng.sample(sorted(answers), min(how_many, len(answers)))
    record = _record(item, item_id, types[0], rng.choice(QUESTIONS[item.modality][types[0]]), answers[types[0]])
    for qtype in types[1:]:
        record["conversations"] += _conversation(rng.choice(QUESTIONS[item.modality][qtype]), answers[qtype])
    if len(types) > 1:
        record["question_type"] = "+".join(types)
    return [record]


def text_corpus() -> list[str]:
    """Every word the task's prompts and answers use (for the tokenizer)."""
    lines = [q for questions in QUESTIONS.values() for variants in questions.values() for q in variants]
    lines += list(CAPTION_PROMPTS.values()) + list(TRANSCRIBE_PROMPTS.values())
    lines += [" ".join(WORDS), " ".join(COUNTS), " ".join(QUADRANTS), " ".join(DIRECTIONS)]
    lines += [" ".join(COLOURS), " ".join(SHAPES), " ".join(SOUND_KINDS), " ".join(NOTES), " ".join(LOUDNESS)]
    lines += ["crosses circles squares triangles at the a moving burst bursts"]
    lines += [" ".join(QUADRANT_WORDS), f"{NO_NOTE} {SILENCE} none empty"]
    return lines


def generate_task(
    root: str | Path,
    *,
    seed: int = 0,
    sizes: TaskSizes = TaskSizes(),
    image_size: int = 28,
    video_num_frames: int = VIDEO_FRAMES,
) -> TaskFiles:
    """Writes the whole task (media + JSON splits) under `root`; the same seed writes the same task.

    Args:
        root: output folder (created).
        seed: seeds every random choice (attributes, jitter, noise).
        sizes: items per split (`TaskSizes`).
        image_size: side of the square images and video frames, in pixels.
        video_num_frames: frames written per video (4 fps); the demo model reads all of them.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    writer = _Writer(root, rng, image_size, video_num_frames)

    # Stage 1 and 2 share media (as the official LLaVA stages share COCO): the first `caption`
    # items of each modality get a caption, every item gets instructions.
    stage1, stage2, twins = [], {}, []
    for modality in SINGLE_MODALITIES:
        stage2[modality] = []
        for index in range(max(sizes.caption, sizes.instruct)):
            item, item_id = writer.make(modality), f"train-{modality}-{index:04d}"
            if index < sizes.caption:
                stage1.append(_record(item, item_id + "-caption", "caption", CAPTION_PROMPTS[modality], caption(item)))
                twins.append(text_twin(stage1[-1], item.descriptions))
                words = " ".join(transcribe(modality, item.attributes))
                stage1.append(_record(item, item_id + "-slots", "slots", TRANSCRIBE_PROMPTS[modality], words))
                twins.append(text_twin(stage1[-1], item.descriptions))
            if index < sizes.instruct:
                stage2[modality] += _questions(rng, item, item_id, 3)
                twins.append(text_twin(stage2[modality][-1], item.descriptions))
    encoder_labels = dict(writer.labels)  # stage-1/2 media only: never the held-out ones

    stage3 = []
    for modality, count in [*((m, sizes.stage3) for m in SINGLE_MODALITIES), ("mixed", sizes.mixed)]:
        for index in range(count):
            item = writer.make(modality)
            stage3 += _questions(rng, item, f"stage3-{modality}-{index:04d}", 1)
            twins.append(text_twin(stage3[-1], item.descriptions))
    rng.shuffle(stage3)
    rng.shuffle(twins)
    test = []
    for modality in MODALITIES:
        for index in range(sizes.test):
            test += _questions(rng, writer.make(modality), f"test-{modality}-{index:04d}", 1)

    files = TaskFiles(
        root=root,
        stage1=root / "stage1_captions.json",
        stage2={modality: root / f"stage2_{modality}.json" for modality in SINGLE_MODALITIES},
        stage3=root / "stage3_mixed.json",
        test=root / "test.json",
        pretrain_text=root / "pretrain_text.json",
        media_labels=root / "media_labels.json",
        text_corpus=text_corpus(),
    )
    _dump(files.stage1, stage1)
    for modality, path in files.stage2.items():
        _dump(path, stage2[modality])
    _dump(files.stage3, stage3)
    _dump(files.test, test)
    _dump(files.pretrain_text, twins)
    _dump(files.media_labels, encoder_labels)
    _dump(root / "task.json", {"seed": seed, "sizes": asdict(sizes), "image_size": image_size})
    return files


def _dump(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1))


__all__ = [
    "COLOURS",
    "MODALITIES",
    "QUESTIONS",
    "SHAPES",
    "TaskFiles",
    "TaskSizes",
    "WORDS",
    "caption",
    "describe",
    "generate_task",
    "play_bursts",
    "render_image",
    "speak_words",
    "text_corpus",
    "slot_components",
    "text_twin",
    "transcribe",
    "video_frames",
]
