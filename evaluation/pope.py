"""POPE (object hallucination, yes/no): answer extraction and precision / recall / F1 /
accuracy / yes-ratio with "yes" as the positive class, as in the POPE paper and LLaVA's
`eval_pope.py` (reimplemented)."""

import re
from collections.abc import Sequence


def yes_no(prediction: str) -> str:
    """ "no" when the first sentence holds the word "No", "no" or "not", else "yes" (the POPE
    rule: anything that is not a negation counts as yes)."""
    first_sentence = prediction.split(".")[0].replace(",", "")
    words = first_sentence.split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def label_of(reference: str) -> str:
    label = re.sub(r"[^a-z]", "", reference.lower())
    if label not in ("yes", "no"):
        raise ValueError(f"POPE labels are 'yes' or 'no', got {reference!r}")
    return label


def pope_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Scores in [0, 1] over paired predictions (free text) and yes/no labels."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"POPE needs as many predictions as labels (> 0), got {len(predictions)} and {len(references)}"
        )
    answers = [yes_no(p) for p in predictions]
    labels = [label_of(r) for r in references]
    tp = sum(a == "yes" and g == "yes" for a, g in zip(answers, labels))
    fp = sum(a == "yes" and g == "no" for a, g in zip(answers, labels))
    tn = sum(a == "no" and g == "no" for a, g in zip(answers, labels))
    fn = sum(a == "no" and g == "yes" for a, g in zip(answers, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": (tp + tn) / len(labels),
        "yes_ratio": answers.count("yes") / len(answers),
    }
