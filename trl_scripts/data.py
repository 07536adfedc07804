"""Training data: the official Uni-MoE JSON format, read as a `datasets.Dataset`.

One sample (official `train/data.py`, `data_sample/samples.json`):

    {"image": "coco/1.jpg",                       # optional, one image (or a list)
     "video": ["f0.jpg", ..., "f7.jpg"],           # optional, frame files (or one video file)
     "voice": ["q.wav"],                           # optional, audio files, one per voice placeholder
     "conversations": [{"from": "human", "value": "<image>\n<audio>\nWhat is shown?"},
                       {"from": "gpt", "value": "A dog."}, ...]}

`<image>`/`<video>` placeholders in the human turns take the sample's images/video in order;
the k-th `<audio>` (or `<speech>`) placeholder takes the k-th `voice` file, as our `speech`
(Whisper) or `audio` (BEATs) modality: `voice_modality`, one value per dataset, or
`"placeholder"` for data that mixes both (each `<speech>` file goes to Whisper, each `<audio>`
file to BEATs). Any `datasets`
dataset with these columns works too (media as paths, or `Image`/`Audio` features, which are
read undecoded).

A sample becomes a chat (`to_messages`) for `UniMoeProcessor.apply_chat_template`: every user
turn lists its media blocks and then its text without the placeholders; the processor's template
puts the media first (image, sound, video), which is the official inference layout. Media are
loaded only in the collator.
"""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

VOICE_MODALITIES = ("speech", "audio", "placeholder")
MEDIA_COLUMNS = ("image", "video", "voice")
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
PLACEHOLDER_RE = re.compile(r"<(image|video|audio|speech)>")
# Whitespace around a placeholder goes with it ("<image>\nWhat ..." → "What ...").
PLACEHOLDER_WITH_SPACE_RE = re.compile(r"\s*<(?:image|video|audio|speech)>\s*")
MODALITY_ORDER = ("image", "video", "speech", "audio")
VOICE_KINDS = ("speech", "audio")


class SampleError(ValueError):
    """A training sample that cannot be used (format, placeholder/media mismatch)."""


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _videos(value: Any) -> list:
    """A sample's videos: one video file, one list of frame files, or a list of either."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return [list(v) for v in value]
    if isinstance(value, (list, tuple)):
        return [list(value)] if value else []
    return [value]


def media_source(value: Any, media_dir: str | Path | None) -> Any:
    """A media column value as a processor source: relative paths under `media_dir`, an
    undecoded `datasets` Image/Audio dict as its bytes (or path), frame lists element-wise."""
    if isinstance(value, (list, tuple)):
        return [media_source(v, media_dir) for v in value]
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, str) and media_dir is not None and not Path(value).is_absolute() and "://" not in value:
        return str(Path(media_dir) / value)
    return value


def _sound_placeholders(sample: Mapping[str, Any]) -> list[str]:
    """`speech`/`audio` for each sound placeholder of the human turns, in order."""
    kinds = []
    for turn in sample.get("conversations") or []:
        if isinstance(turn, Mapping) and ROLE_NAMES.get(turn.get("from")) == "user":
            kinds += [
                m.group(1) for m in PLACEHOLDER_RE.finditer(str(turn.get("value", ""))) if m.group(1) in VOICE_KINDS
            ]
    return kinds


def sample_media(sample: Mapping[str, Any], voice_modality: str = "speech") -> dict[str, list]:
    """The media items of a sample by modality, in placeholder order (sources as stored).

    With `voice_modality="placeholder"` the k-th `voice` file belongs to the k-th sound
    placeholder's modality (`<speech>` or `<audio>`); files beyond the placeholders go to speech,
    so `to_messages` reports the mismatch."""
    if voice_modality not in VOICE_MODALITIES:
        raise ValueError(f"voice_modality must be one of {VOICE_MODALITIES}, got {voice_modality!r}.")
    media = {m: [] for m in MODALITY_ORDER}
    media["image"] = _as_list(sample.get("image"))
    media["video"] = _videos(sample.get("video"))
    voices = _as_list(sample.get("voice"))
    if voice_modality != "placeholder":
        media[voice_modality] = voices
        return media
    kinds = _sound_placeholders(sample)
    for index, voice in enumerate(voices):
        media[kinds[index] if index < len(kinds) else "speech"].append(voice)
    return media


def sample_modality(sample: Mapping[str, Any], voice_modality: str = "speech") -> str:
    """The modality group of a sample: e.g. `"image"`, `"image+speech"`, or `"text"`."""
    media = sample_media(sample, voice_modality)
    present = [m for m in MODALITY_ORDER if media[m]]
    return "+".join(present) if present else "text"


def _turns(sample: Mapping[str, Any]) -> list[tuple[str, str]]:
    conversations = sample.get("conversations")
    if not isinstance(conversations, (list, tuple)) or not conversations:
        raise SampleError("'conversations' must be a non-empty list of {'from', 'value'} turns")
    turns = []
    for i, turn in enumerate(conversations):
        if (
            not isinstance(turn, Mapping)
            or turn.get("from") not in ROLE_NAMES
            or not isinstance(turn.get("value"), str)
        ):
            raise SampleError(f"turn {i} must be {{'from': 'human'|'gpt', 'value': str}}, got {turn!r}")
        turns.append((ROLE_NAMES[turn["from"]], turn["value"]))
    if turns[0][0] != "user":  # the official loader drops a leading non-human turn
        turns = turns[1:]
    for i, (role, _) in enumerate(turns):
        if role != ("user", "assistant")[i % 2]:
            raise SampleError("turns must alternate human, gpt, human, ...")
    if len(turns) < 2:
        raise SampleError("a sample needs at least one human turn and one gpt answer")
    return turns


def to_messages(
    sample: Mapping[str, Any], voice_modality: str = "speech", media_dir: str | Path | None = None
) -> list[dict]:
    """An official sample as chat messages for `UniMoeProcessor.apply_chat_template`.

    Raises:
        SampleError: bad turns, placeholders in answers, or placeholder counts that differ from
            the sample's media (e.g. two `<image>` for one image).
    """
    media = sample_media(sample, voice_modality)
    turns = _turns(sample)
    by_placeholder = voice_modality == "placeholder"
    kinds = {
        "image": "image",
        "video": "video",
        "audio": "audio" if by_placeholder else voice_modality,
        "speech": "speech" if by_placeholder else voice_modality,
    }
    wanted = dict.fromkeys(MODALITY_ORDER, 0)
    messages = []
    for role, text in turns:
        found = [kinds[m.group(1)] for m in PLACEHOLDER_RE.finditer(text)]
        if role == "assistant":
            if found:
                raise SampleError(f"a gpt turn has media placeholders: {text[:80]!r}")
            messages.append({"role": "assistant", "content": text})
            continue
        blocks = []
        for kind in found:
            source = media_source(media[kind][wanted[kind]], media_dir) if wanted[kind] < len(media[kind]) else None
            wanted[kind] += 1
            blocks.append({"type": kind, kind: source})
        blocks.append({"type": "text", "text": PLACEHOLDER_WITH_SPACE_RE.sub(" ", text).strip()})
        messages.append({"role": "user", "content": blocks})
    for modality in MODALITY_ORDER:
        if wanted[modality] != len(media[modality]):
            column = "voice" if modality in (voice_modality, *(VOICE_KINDS if by_placeholder else ())) else modality
            raise SampleError(
                f"{wanted[modality]} {modality} placeholder(s) in the human turns but {len(media[modality])} "
                f"item(s) in '{column}'"
            )
    return messages


def estimated_length(sample: Mapping[str, Any], tokens_per_item: Mapping[str, int], voice_modality: str) -> int:
    """A cheap length for grouping: words of all turns plus each media item's tokens (sound: one chunk)."""
    words = sum(len(turn["value"].split()) for turn in sample["conversations"])
    media = sample_media(sample, voice_modality)
    return words + sum(tokens_per_item.get(m, 0) * len(items) for m, items in media.items())


@dataclass
class DataReport:
    """What building the dataset kept and dropped."""

    total: int = 0
    kept: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    modalities: dict[str, int] = field(default_factory=dict)
    media_dir: Path | None = None

    def summary(self) -> str:
        groups = ", ".join(f"{key}: {count}" for key, count in sorted(self.modalities.items()))
        text = f"{self.kept} of {self.total} samples kept ({groups})"
        if self.invalid:
            shown = "; ".join(f"sample {i}: {reason}" for i, reason in self.invalid[:5])
            more = f" (+{len(self.invalid) - 5} more)" if len(self.invalid) > 5 else ""
            text += f"; {len(self.invalid)} invalid skipped: {shown}{more}"
        return text


def _read_json_samples(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in f if line.strip()]
        samples = json.load(f)
    if not isinstance(samples, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(samples).__name__}.")
    return samples


def _from_samples(samples: list[dict]):
    from datasets import Dataset

    # Samples carry different optional keys: build columns over their union.
    columns = list(dict.fromkeys(key for sample in samples for key in sample))
    return Dataset.from_dict({key: [sample.get(key) for sample in samples] for key in columns})


def load_samples(dataset_name: str, split: str = "train", dataset_config: str | None = None):
    """A `datasets.Dataset` from an official JSON/JSONL file, a `save_to_disk` folder, or any
    name or folder `datasets.load_dataset` reads."""
    import datasets

    path = Path(dataset_name)
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        return _from_samples(_read_json_samples(path))
    if path.is_dir() and (path / "dataset_info.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(dataset_name, name=dataset_config, split=split)


def _undecoded(dataset):
    """Image/Audio/Video features are cast to undecoded dicts: the collator loads them."""
    import datasets

    for name, feature in dataset.features.items():
        media_types = tuple(getattr(datasets, t) for t in ("Image", "Audio", "Video") if hasattr(datasets, t))
        if isinstance(feature, media_types) and getattr(feature, "decode", False):
            dataset = dataset.cast_column(name, type(feature)(decode=False))
    return dataset


def default_media_dir(dataset_name: str, media_dir: str | Path | None) -> Path | None:
    """Relative media paths are under `media_dir`, else next to a JSON file, else the working directory."""
    if media_dir is not None:
        return Path(media_dir)
    path = Path(dataset_name)
    return path.parent.resolve() if path.is_file() else None


def build_dataset(
    dataset_name: str,
    *,
    split: str = "train",
    dataset_config: str | None = None,
    media_dir: str | Path | None = None,
    voice_modality: str = "speech",
    tokens_per_item: Mapping[str, int] | None = None,
    num_proc: int | None = None,
):
    """The training dataset and a `DataReport`.

    Invalid samples (`to_messages` errors) are dropped, each logged with its index. The result
    keeps the original columns (relative media paths made absolute, under `default_media_dir`) and adds `sample_index` (position in
    the source), `modality` (e.g. `"image+speech"`) and `length` (an estimate, for grouping).
    """
    if voice_modality not in VOICE_MODALITIES:
        raise ValueError(f"voice_modality must be one of {VOICE_MODALITIES}, got {voice_modality!r}.")
    dataset = _undecoded(load_samples(dataset_name, split, dataset_config))
    if "conversations" not in dataset.column_names:
        raise ValueError(
            f"{dataset_name}: the dataset has no 'conversations' column (columns: {dataset.column_names})."
        )
    root = default_media_dir(dataset_name, media_dir)
    tokens = dict(tokens_per_item or {})

    def check(sample: dict, index: int) -> dict:
        out = {"sample_index": index, "problem": "", "modality": "text", "length": 0}
        try:
            to_messages(sample, voice_modality)
        except SampleError as err:
            out["problem"] = str(err)
            return out
        for column in MEDIA_COLUMNS:  # paths become absolute; undecoded `datasets` media stay as they are
            if isinstance(sample.get(column), (str, list)):
                out[column] = media_source(sample[column], root)
        out["modality"] = sample_modality(sample, voice_modality)
        out["length"] = estimated_length(sample, tokens, voice_modality)
        return out

    checked = dataset.map(check, with_indices=True, num_proc=num_proc, desc="Checking samples")
    report = DataReport(total=len(checked), media_dir=root)
    problems = checked["problem"]
    report.invalid = [(index, problem) for index, problem in zip(checked["sample_index"], problems) if problem]
    for index, problem in report.invalid:
        logger.warning(f"Skipping sample {index} of {dataset_name}: {problem}")
    kept = checked.filter(lambda problem: not problem, input_columns="problem", num_proc=num_proc)
    kept = kept.remove_columns("problem")
    report.kept = len(kept)
    for modality in kept["modality"]:
        report.modalities[modality] = report.modalities.get(modality, 0) + 1
    if not report.kept:
        raise ValueError(f"{dataset_name}: no usable sample ({report.summary()}).")
    return kept, report


def tokens_per_item(processor) -> dict[str, int]:
    """Placeholder tokens of one media item (sound: one 30-s chunk) for `processor`."""
    return {m: processor.tokens_per_item(m) for m in MODALITY_ORDER}


__all__ = [
    "DataReport",
    "SampleError",
    "VOICE_MODALITIES",
    "build_dataset",
    "default_media_dir",
    "estimated_length",
    "load_samples",
    "media_source",
    "sample_media",
    "sample_modality",
    "to_messages",
    "tokens_per_item",
]
