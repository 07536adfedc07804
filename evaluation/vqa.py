"""VQA soft accuracy: the official VQA v2 / OK-VQA rule and the A-OKVQA direct-answer rule."""

from collections.abc import Sequence

from .normalize import clean_whitespace, normalize_answer, process_punctuation


def _check_answers(answers: Sequence[str], minimum: int) -> list[str]:
    if isinstance(answers, str) or len(answers) < minimum:
        raise ValueError(
            f"VQA accuracy needs a list of at least {minimum} human answers (VQA v2 has 10), got {answers!r}; "
            "score single-reference sets with exact match instead"
        )
    return [clean_whitespace(str(answer)) for answer in answers]


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction, in [0, 1].

    The prediction is fully normalised; the human answers only lose punctuation, and only when
    they disagree (as the official `vqaEval.py` does). With n answers, each of the n leave-one-out
    subsets scores min(#matches among the other n-1 / 3, 1), and the n scores are averaged: with
    10 answers that is the average over the 10-choose-9 subsets.
    """
    refs = _check_answers(answers, minimum=2)
    predicted = normalize_answer(prediction)
    if len(set(refs)) > 1:
        refs = [process_punctuation(ref) for ref in refs]
    matches = [ref == predicted for ref in refs]
    total = sum(matches)
    # Leaving answer i out removes one match exactly when answer i itself matched.
    per_subset = [min(1.0, (total - matched) / 3.0) for matched in matches]
    return sum(per_subset) / len(per_subset)


def aokvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """A-OKVQA direct-answer accuracy, in [0, 1]: min(#answers equal to the prediction / 3, 1),
    no leave-one-out averaging (allenai/aokvqa `eval_predictions.py`).

    The official script compares raw strings and expects normalised predictions; here the
    prediction goes through the VQA normalisation first (the answers are already normalised
    in the released annotations).
    """
    refs = _check_answers(answers, minimum=1)
    predicted = normalize_answer(prediction)
    return min(1.0, sum(ref == predicted for ref in refs) / 3.0)
