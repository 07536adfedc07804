"""Evaluation samples, from the official eval JSON format or from a `datasets` dataset.

Official format (the JSONs of `Uni_MoE/data_sample/`): a JSON list (or JSONL) of items with
`conversations` (the first `human` turn is the prompt, with `<image>` / `<audio>` / `<video>`
placeholders), media under `image` (a path or a list), `video` (a list of frame files, or one
video file), `voice` (a list of audio files; speech or general audio depending on the task),
an id under `question_id` or `id`, and the gold answer(s) under `gt`, `answers`, `answer` or
`label` (else the `gpt` turn, when not empty). Our own keys `speech` / `audio` and the
placeholders `<speech>` are accepted too. Media paths are looked up under `media_root` (their
leading "/" dropped, as the official loader reads them from an image-folder archive), then as
given, then next to the JSON file.
"""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .choice import as_options, parse_options
from .tasks import TaskPreset

# EvalSample.media keys = the processor's keyword arguments, and their placeholders.
PLACEHOLDERS = {"images": "<image>", "videos": "<video>", "speech": "<speech>", "audios": "<audio>"}
_ID_KEYS = ("question_id", "id")
_REFERENCE_KEYS = ("gt", "answers", "answer", "label")
_SUBSET_KEYS = ("subset", "split", "category", "modality")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DatasetFormatError(ValueError):
    """An evaluation file or dataset that cannot be read as samples."""


@dataclass
class EvalSample:
    id: str
    prompt: str  # the user turn, placeholders included, prompt suffix applied
    media: dict[str, list[Any]] = field(default_factory=dict)  # processor kwarg -> items in placeholder order
    references: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    subset: str | None = None


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _answer_strings(value: Any) -> list[str]:
    # VQA-style annotations give [{"answer": ...}, ...]; others give a string or a list of strings.
    return [str(v["answer"]) if isinstance(v, Mapping) else str(v) for v in _as_list(value)]


def add_suffix(prompt: str, suffix: str) -> str:
    """Appends the task's prompt suffix unless the prompt already ends with it (the official
    files carry it already)."""
    if not suffix or prompt.rstrip().endswith(suffix.strip()):
        return prompt
    return prompt + suffix


def count_placeholders(prompt: str) -> dict[str, int]:
    return {key: prompt.count(token) for key, token in PLACEHOLDERS.items()}


def check_placeholders(sample: EvalSample) -> None:
    counts = count_placeholders(sample.prompt)
    for key, token in PLACEHOLDERS.items():
        have = len(sample.media.get(key, []))
        if counts[key] != have:
            raise DatasetFormatError(
                f"sample {sample.id!r}: the prompt has {counts[key]} {token} placeholder(s) but {have} {key} item(s)"
            )


class _PathResolver:
    def __init__(self, media_root: str | Path | None, base_dir: Path):
        self.media_root = Path(media_root) if media_root is not None else None
        self.base_dir = base_dir

    def __call__(self, path: Any, sample_id: str) -> Any:
        if not isinstance(path, str):
            return path  # already loaded (PIL image, array, bytes)
        candidates = [Path(path)]
        if self.media_root is not None:
            candidates.insert(0, self.media_root / path.lstrip("/"))
        candidates.append(self.base_dir / path.lstrip("/"))
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        tried = ", ".join(str(c) for c in candidates)
        raise DatasetFormatError(
            f"sample {sample_id!r}: media file {path!r} not found (tried {tried}); set --media-root"
        )


def _human_prompt(item: Mapping, sample_id: str) -> str:
    for turn in item.get("conversations") or []:
        if turn.get("from") == "human":
            return str(turn["value"])
    for key in ("text", "question", "prompt"):
        if isinstance(item.get(key), str):
            return item[key]
    raise DatasetFormatError(f"sample {sample_id!r}: no human turn in `conversations` and no `text`/`question` field")


def _references(item: Mapping) -> list[str]:
    for key in _REFERENCE_KEYS:
        if item.get(key) not in (None, "", []):
            return _answer_strings(item[key])
    gpt = [t["value"] for t in item.get("conversations") or [] if t.get("from") == "gpt"]
    return [gpt[0]] if gpt and gpt[0] else []


def _voice_keys(prompt: str, voice_as: str, count: int) -> list[str]:
    """The media key of each `voice` file: one for all, or (`placeholder`) each sound placeholder's."""
    if voice_as != "placeholder":
        return ["speech" if voice_as == "speech" else "audios"] * count
    return ["speech" if kind == "speech" else "audios" for kind in re.findall(r"<(speech|audio)>", prompt)][:count]


def _media_of(item: Mapping, voice_keys: list[str], resolve, sample_id: str) -> dict[str, list]:
    media = {"images": [resolve(p, sample_id) for p in _as_list(item.get("image"))]}
    video = item.get("video")
    if isinstance(video, list) and video and all(_is_image_file(f) for f in video):
        media["videos"] = [[resolve(f, sample_id) for f in video]]  # one video given as its frames
    else:
        media["videos"] = [resolve(v, sample_id) for v in _as_list(video)]
    media["speech"] = [resolve(p, sample_id) for p in _as_list(item.get("speech"))]
    media["audios"] = [resolve(p, sample_id) for p in _as_list(item.get("audio"))]
    voices = _as_list(item.get("voice"))
    if len(voice_keys) < len(voices):
        raise DatasetFormatError(
            f"sample {sample_id!r}: {len(voices)} `voice` files but {len(voice_keys)} <speech>/<audio> placeholders"
        )
    for key, path in zip(voice_keys, voices):
        media[key].append(resolve(path, sample_id))
    return {key: items for key, items in media.items() if items}


def _is_image_file(path: Any) -> bool:
    return isinstance(path, str) and Path(path).suffix.lower() in _IMAGE_SUFFIXES


def _map_official_placeholders(prompt: str, voice_as: str) -> str:
    # Official items have one sound slot, `<audio>`, fed by `voice`: speech or audio per task.
    # Items in our own format (`speech` / `audio` keys) already say which.
    return prompt if voice_as == "audio" else prompt.replace("<audio>", "<speech>")


def _subset(item: Mapping) -> str | None:
    for key in _SUBSET_KEYS:
        if isinstance(item.get(key), str) and item[key] != "default":
            return item[key]
    return None


def sample_from_item(
    item: Mapping, index: int, task: TaskPreset, resolve, annotations: Mapping[str, list[str]] | None = None
) -> EvalSample:
    if not isinstance(item, Mapping):
        raise DatasetFormatError(f"item {index}: expected an object, got {type(item).__name__}")
    raw_id = next((item[k] for k in _ID_KEYS if item.get(k) is not None), index)
    sample_id = str(raw_id)
    prompt = _human_prompt(item, sample_id)
    if item.get("voice") is not None and task.voice_as != "placeholder":
        prompt = _map_official_placeholders(prompt, task.voice_as)
    voice_keys = _voice_keys(prompt, task.voice_as, len(_as_list(item.get("voice"))))
    references = _references(item)
    if not references and annotations is not None:
        references = list(annotations.get(sample_id, []))
    options = as_options(item.get("options") or item.get("choices")) or parse_options(prompt)
    sample = EvalSample(
        id=sample_id,
        prompt=add_suffix(prompt, task.prompt_suffix),
        media=_media_of(item, voice_keys, resolve, sample_id),
        references=references,
        options=options,
        subset=_subset(item),
    )
    check_placeholders(sample)
    return sample


def check_unique_ids(samples: Sequence[EvalSample]) -> None:
    seen = set()
    for sample in samples:
        if sample.id in seen:
            raise DatasetFormatError(f"duplicate sample id {sample.id!r}: ids key the saved predictions")
        seen.add(sample.id)


def read_items(path: str | Path) -> list:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise DatasetFormatError(f"{path}: not valid JSONL ({err})") from err
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(items, list):
        raise DatasetFormatError(f"{path}: an eval JSON is a list of items, got {type(items).__name__}")
    return items


def load_vqa_annotations(path: str | Path) -> dict[str, list[str]]:
    """question_id -> human answers, from a VQA-format annotation file (`{"annotations": [{"question_id",
    "answers": [{"answer"}...]}]}`), as OK-VQA and VQAv2 val ship them."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise DatasetFormatError(f"{path}: expected a VQA annotation file with an `annotations` list")
    return {str(a["question_id"]): _answer_strings(a["answers"]) for a in annotations}


def load_eval_json(
    path: str | Path,
    task: TaskPreset,
    *,
    media_root: str | Path | None = None,
    annotations: Mapping[str, list[str]] | None = None,
) -> list[EvalSample]:
    """Samples of an official-format eval JSON / JSONL file."""
    path = Path(path)
    resolve = _PathResolver(media_root, path.parent)
    samples = [sample_from_item(item, i, task, resolve, annotations) for i, item in enumerate(read_items(path))]
    check_unique_ids(samples)
    return samples


# ------------------------------------------------------------------------------ datasets

DEFAULT_COLUMNS = {
    "id": ("question_id", "id"),
    "question": ("question", "text", "prompt"),
    "answers": ("answers", "answer", "gt", "label"),
    "images": ("image",),
    "videos": ("video",),
    "speech": ("speech",),
    "audios": ("audio",),
    "options": ("options", "choices"),
    "subset": ("subset", "category"),
}


def _pick_columns(names: Sequence[str], columns: Mapping[str, str] | None) -> dict[str, str]:
    columns = dict(columns or {})
    unknown = set(columns) - set(DEFAULT_COLUMNS)
    if unknown:
        raise DatasetFormatError(f"unknown column roles {sorted(unknown)}; roles are {sorted(DEFAULT_COLUMNS)}")
    for role, column in columns.items():
        if column not in names:
            raise DatasetFormatError(f"column {column!r} (for {role}) not in the dataset's columns {list(names)}")
    for role, guesses in DEFAULT_COLUMNS.items():
        if role not in columns:
            found = next((g for g in guesses if g in names), None)
            if found is not None:
                columns[role] = found
    if "question" not in columns:
        raise DatasetFormatError(f"no question column among {list(names)}; pass one, e.g. --columns question=NAME")
    return columns


def _audio_source(value: Any) -> Any:
    # Audio columns are read undecoded ({"bytes", "path"}): the processor decodes and resamples.
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        return value.get("bytes") or value.get("path")
    return value


def _format_options(question: str, options: dict[str, str]) -> str:
    if not options or parse_options(question):
        return question
    return question + "\n" + "\n".join(f"{letter}. {text}" for letter, text in options.items())


def load_hf_dataset(
    name_or_path: str,
    task: TaskPreset,
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[EvalSample]:
    """Samples of a `datasets` dataset: a folder written by `save_to_disk`, or anything
    `load_dataset` reads (a local data folder / files; a Hub name where there is network).
    The prompt is the task's placeholders, the question, the options (if any, as "A. text"
    lines) and the task's suffix."""
    import datasets

    local = Path(name_or_path)
    if (local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(str(local))
    else:
        dataset = datasets.load_dataset(name_or_path, split=split)
    if isinstance(dataset, datasets.DatasetDict):
        if split is None:
            raise DatasetFormatError(f"{name_or_path} has splits {list(dataset)}; choose one with --split")
        dataset = dataset[split]
    roles = _pick_columns(dataset.column_names, columns)
    for role in ("speech", "audios"):
        if role in roles and isinstance(dataset.features[roles[role]], datasets.Audio):
            dataset = dataset.cast_column(roles[role], datasets.Audio(decode=False))

    samples = []
    for index, row in enumerate(dataset):
        options = as_options(row[roles["options"]]) if "options" in roles else {}
        answers = _answer_strings(row[roles["answers"]]) if "answers" in roles else []
        if options and len(answers) == 1 and answers[0].isdigit() and int(answers[0]) < len(options):
            answers = [chr(ord("A") + int(answers[0]))]  # an answer given as the option's index
        media = {}
        for key in PLACEHOLDERS:
            if key in roles and row[roles[key]] is not None:
                media[key] = [_audio_source(v) if key in ("speech", "audios") else v for v in _as_list(row[roles[key]])]
        head = "".join(PLACEHOLDERS[key] * len(items) + "\n" for key, items in media.items())
        prompt = head + _format_options(str(row[roles["question"]]), options)
        sample = EvalSample(
            id=str(row[roles["id"]]) if "id" in roles else str(index),
            prompt=add_suffix(prompt, task.prompt_suffix),
            media=media,
            references=answers,
            options=options,
            subset=str(row[roles["subset"]]) if "subset" in roles and row[roles["subset"]] is not None else None,
        )
        check_placeholders(sample)
        samples.append(sample)
    check_unique_ids(samples)
    return samples


def load_samples(
    data: str | Path,
    task: TaskPreset,
    *,
    media_root: str | Path | None = None,
    annotations: str | Path | None = None,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[EvalSample]:
    """An official eval JSON / JSONL file, else a `datasets` dataset."""
    path = Path(data)
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        answers = load_vqa_annotations(annotations) if annotations else None
        return load_eval_json(path, task, media_root=media_root, annotations=answers)
    if annotations:
        raise DatasetFormatError("--annotations applies to official eval JSON files only")
    return load_hf_dataset(str(data), task, split=split, columns=columns)


_PLACEHOLDER_RE = re.compile("|".join(re.escape(t) for t in PLACEHOLDERS.values()))


def question_text(prompt: str) -> str:
    """The prompt without its placeholders (for the saved records)."""
    return _PLACEHOLDER_RE.sub("", prompt).strip()
