"""The evaluation loop: batched generation → predictions appended to JSONL as each batch ends →
scores. A rerun with the same output folder resumes: saved predictions are kept and only the
missing samples are generated; a half-written last line (a crash mid-write) is dropped and
redone. `run.json` records what produced the predictions, and a rerun with different settings
is refused rather than mixing two runs in one file.
"""

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .data import EvalSample
from .generation import GenerationSettings, Generator
from .scoring import score_records
from .tasks import TaskPreset

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
RUN_FILE = "run.json"
SCORES_FILE = "scores.json"


class RunMismatchError(ValueError):
    """The output folder holds predictions made with other settings."""


class PredictionsFileError(ValueError):
    """A predictions file that is not one JSON record per line."""


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_predictions(path: Path, repair: bool = False) -> dict[str, dict]:
    """id -> record of a predictions file. Records are written whole with their newline, so
    bytes after the last newline are a write cut short by a crash: they are ignored (and, with
    `repair`, cut off the file so appends stay line-aligned). A bad complete line raises."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if data[end:].strip():
        logger.warning("%s: dropping an unfinished last line (%d bytes)", path, len(data) - end)
    records = {}
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[str(record["id"])] = record
        except (ValueError, KeyError, TypeError) as err:
            raise PredictionsFileError(f"{path}, line {number}: not a prediction record ({err!r})") from err
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return records


def _flatten(meta: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in meta.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_run(path: Path, meta: dict[str, Any], overwrite: bool) -> None:
    """Writes `run.json`, or checks that an existing one matches `meta`."""
    if path.exists() and not overwrite:
        saved, now = _flatten(json.loads(path.read_text())), _flatten(meta)
        differences = [
            f"{key}: {saved.get(key)!r} then, {now.get(key)!r} now"
            for key in sorted(set(saved) | set(now))
            if saved.get(key) != now.get(key)
        ]
        if differences:
            raise RunMismatchError(
                f"{path.parent} holds predictions made with other settings ({'; '.join(differences)}); "
                "use a new output folder, or --overwrite to start over"
            )
        return
    path.write_text(json.dumps(meta, indent=2) + "\n")


def _record(sample: EvalSample, prediction: str) -> dict[str, Any]:
    return {
        "id": sample.id,
        "prompt": sample.prompt,
        "prediction": prediction,
        "references": sample.references,
        "options": sample.options,
        "subset": sample.subset,
    }


def generate_predictions(
    samples: Sequence[EvalSample],
    generator: Generator,
    settings: GenerationSettings,
    predictions_path: Path,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> list[dict]:
    """Generates what `predictions_path` lacks; returns the records of `samples`, in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    done = read_predictions(predictions_path, repair=True)
    todo = [s for s in samples if s.id not in done]
    if done and todo:
        logger.info("resuming: %d of %d samples already predicted", len(samples) - len(todo), len(samples))
    with (
        open(predictions_path, "a", encoding="utf-8") as out,
        tqdm(total=len(samples), initial=len(samples) - len(todo), disable=not progress, desc="generating") as bar,
    ):
        for batch in _batches(todo, batch_size):
            answers = generator(batch, settings)
            if len(answers) != len(batch):
                raise RuntimeError(f"the generator returned {len(answers)} answers for {len(batch)} samples")
            for sample, answer in zip(batch, answers):
                record = _record(sample, answer)
                done[sample.id] = record
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())  # a batch is on disk before the next one starts
            bar.update(len(batch))
    return [done[s.id] for s in samples]


def export_submission(task: TaskPreset, records: Sequence[dict], directory: Path) -> Path | None:
    """Writes the file an external scorer takes: VQAv2's EvalAI results list, MM-Vet's
    {id: answer} map for its GPT-4 grader."""
    if task.submission == "vqav2":
        path = directory / "submission_vqav2.json"
        rows = [{"question_id": _numeric_id(r["id"]), "answer": r["prediction"]} for r in records]
    elif task.submission == "mmvet":
        path = directory / "submission_mmvet.json"
        rows = {r["id"]: r["prediction"] for r in records}
    else:
        return None
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    return path


def _numeric_id(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def run_evaluation(
    samples: Sequence[EvalSample],
    generator: Generator,
    task: TaskPreset,
    output_dir: str | Path,
    *,
    settings: GenerationSettings | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    run_info: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generates the missing predictions of `samples` (the first `limit`), scores all of them,
    and writes `predictions.jsonl`, `run.json`, `scores.json` (and a submission file for tasks
    scored elsewhere) to `output_dir`. Returns the scores."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = settings or task.generation
    selected = list(samples[:limit] if limit is not None else samples)
    meta = {
        "task": task.name,
        "metric": task.metric,
        "prompt_suffix": task.prompt_suffix,
        "voice_as": task.voice_as,
        "generation": settings.as_dict(),
        **(run_info or {}),
    }
    predictions_path = output_dir / PREDICTIONS_FILE
    if overwrite and predictions_path.exists():
        predictions_path.unlink()
    check_run(output_dir / RUN_FILE, meta, overwrite)
    records = generate_predictions(
        selected, generator, settings, predictions_path, batch_size=batch_size, progress=progress
    )
    scores = score_records(task, records)
    submission = export_submission(task, records, output_dir)
    if submission is not None:
        scores["submission"] = str(submission)
    (output_dir / SCORES_FILE).write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    return scores
