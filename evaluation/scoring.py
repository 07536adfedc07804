"""Scores of saved prediction records, per task metric.

A record is one line of `predictions.jsonl`: `{"id", "prompt", "prediction", "references",
"options", "subset"}`. Scores are percentages (CIDEr x100, as papers print it). Records without
references are counted, not scored, and the count is reported (`n_unscored`).
"""

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from .choice import choice_correct
from .cider import cider_d
from .normalize import normalize_answer
from .pope import pope_scores
from .tasks import TaskPreset
from .text_metrics import MetricUnavailable, bleu, meteor, rouge_l
from .vqa import aokvqa_accuracy, vqa_accuracy


def _per_item(fn: Callable[[dict], float]) -> Callable[[list[dict]], dict[str, Any]]:
    """A scorer that averages one number per record."""

    def score(records: list[dict]) -> dict[str, Any]:
        values = [fn(r) for r in records]
        return {"score": 100.0 * sum(values) / len(values)}

    return score


def _exact(record: dict) -> float:
    predicted = normalize_answer(record["prediction"])
    return float(any(predicted == normalize_answer(ref) for ref in record["references"]))


def _choice(record: dict) -> float:
    return float(choice_correct(record["prediction"], record["references"][0], record.get("options")))


def _pope(records: list[dict]) -> dict[str, Any]:
    by_subset = defaultdict(list)
    for record in records:
        by_subset[record.get("subset") or "all"].append(record)
    details = {
        name: pope_scores([r["prediction"] for r in rs], [r["references"][0] for r in rs])
        for name, rs in by_subset.items()
    }
    # The papers' POPE number: F1 averaged over the three sampling settings.
    mean_f1 = sum(d["f1"] for d in details.values()) / len(details)
    return {"score": 100.0 * mean_f1, "details": details}


def _caption(records: list[dict]) -> dict[str, Any]:
    predictions = [r["prediction"] for r in records]
    references = [r["references"] for r in records]
    cider, _ = cider_d(predictions, references)
    details: dict[str, Any] = {"cider": 100.0 * cider}
    for name, fn, scale in (("bleu4", bleu, 1.0), ("rouge_l", rouge_l, 100.0), ("meteor", meteor, 100.0)):
        try:
            details[name] = scale * fn(predictions, references)
        except MetricUnavailable as err:
            details[name] = f"unavailable: {err}"
    return {"score": details["cider"], "details": details}


SCORERS: dict[str, Callable[[list[dict]], dict[str, Any]]] = {
    "vqa": _per_item(lambda r: vqa_accuracy(r["prediction"], r["references"])),
    "aokvqa": _per_item(lambda r: aokvqa_accuracy(r["prediction"], r["references"])),
    "choice": _per_item(_choice),
    "exact_match": _per_item(_exact),
    "pope": _pope,
    "caption": _caption,
}


def _subset_scores(scorer, records: list[dict]) -> dict[str, dict[str, Any]]:
    by_subset = defaultdict(list)
    for record in records:
        if record.get("subset"):
            by_subset[record["subset"]].append(record)
    return {name: {"n": len(rs), "score": scorer(rs)["score"]} for name, rs in by_subset.items()}


def table_cell(task: TaskPreset, result: dict[str, Any]) -> str:
    """The value for the paper's column: "a/b" for tasks reported per subset, else the score."""
    if result.get("score") is None:
        return "–"
    subsets = result.get("subsets", {})
    if task.subsets and all(name in subsets for name in task.subsets):
        return "/".join(f"{subsets[name]['score']:.2f}" for name in task.subsets)
    return f"{result['score']:.2f}"


def score_records(task: TaskPreset, records: Sequence[dict]) -> dict[str, Any]:
    """The task's scores over `records`."""
    scored = [r for r in records if r.get("references")]
    result: dict[str, Any] = {
        "task": task.name,
        "metric": task.metric,
        "n": len(records),
        "n_unscored": len(records) - len(scored),
        "score": None,
    }
    if task.note:
        result["note"] = task.note
    if task.metric == "external":
        result["note"] = task.note or "scored by an external grader from the exported predictions"
    elif scored:
        scorer = SCORERS[task.metric]
        result.update(scorer(scored))
        if task.metric != "pope":  # POPE's subsets are already in its details
            result["subsets"] = _subset_scores(scorer, scored)
    result["table_cell"] = table_cell(task, result)
    return result
