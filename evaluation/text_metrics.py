"""Text-overlap metrics, offline.

`evaluate` 0.4 ships no metric code: `evaluate.load("bleu")` etc. fetch a script from the Hub
and fail without network. So BLEU and ROUGE call the libraries evaluate's own `sacrebleu` and
`rouge` modules wrap (sacrebleu, Google's rouge-score) directly; METEOR uses NLTK's, which
needs the WordNet corpus (not on PyPI: `nltk.download("wordnet")` once where there is network);
exact match is ours (a few lines, same options as evaluate's `exact_match`).
"""

import re
import string
from collections.abc import Sequence

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


class MetricUnavailable(ValueError):
    """A metric whose library or data is not installed here."""


def _check_pairs(predictions: Sequence[str], references: Sequence, name: str) -> None:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"{name} needs as many predictions as references (> 0), got {len(predictions)} and {len(references)}"
        )


def exact_match(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    ignore_case: bool = True,
    ignore_punctuation: bool = True,
    regexes_to_ignore: Sequence[str] = (),
) -> float:
    """Fraction of predictions equal to their reference after the chosen clean-ups (whitespace
    is always stripped)."""
    _check_pairs(predictions, references, "exact match")

    def clean(text: str) -> str:
        for pattern in regexes_to_ignore:
            text = re.sub(pattern, "", text)
        if ignore_case:
            text = text.lower()
        if ignore_punctuation:
            text = text.translate(_PUNCT_TABLE)
        return " ".join(text.split())

    return sum(clean(p) == clean(r) for p, r in zip(predictions, references)) / len(predictions)


def _as_reference_lists(references: Sequence) -> list[list[str]]:
    return [[refs] if isinstance(refs, str) else list(refs) for refs in references]


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus BLEU-4 (sacrebleu, its default 13a tokenisation), in [0, 100]. Items may have
    different numbers of references."""
    _check_pairs(predictions, references, "BLEU")
    try:
        import sacrebleu
    except ImportError as err:
        raise MetricUnavailable("BLEU needs sacrebleu: pip install 'unimoe[eval]'") from err
    refs = _as_reference_lists(references)
    width = max(len(r) for r in refs)
    # sacrebleu takes one stream per reference position; missing references are None.
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Mean ROUGE-L F1 (rouge-score, Porter stemming), best reference per item, in [0, 1]."""
    _check_pairs(predictions, references, "ROUGE-L")
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:
        raise MetricUnavailable("ROUGE needs rouge-score: pip install 'unimoe[eval]'") from err
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score_multi(refs, pred)["rougeL"].fmeasure
        for pred, refs in zip(predictions, _as_reference_lists(references))
    ]
    return sum(scores) / len(scores)


def meteor(predictions: Sequence[str], references: Sequence[str | Sequence[str]], *, wordnet=None) -> float:
    """Mean METEOR (NLTK's implementation, not the Java METEOR 1.5 of the COCO toolkit), in
    [0, 1]. `wordnet` defaults to NLTK's WordNet corpus, which must have been downloaded."""
    _check_pairs(predictions, references, "METEOR")
    try:
        import nltk
        from nltk.translate.meteor_score import meteor_score
    except ImportError as err:
        raise MetricUnavailable("METEOR needs nltk: pip install 'unimoe[eval]'") from err
    if wordnet is None:
        try:
            nltk.data.find("corpora/wordnet")
        except LookupError as err:
            raise MetricUnavailable(
                "METEOR needs NLTK's WordNet corpus, which is not on PyPI: run nltk.download('wordnet') on a machine "
                "with network (or copy nltk_data/corpora/wordnet here)"
            ) from err
        from nltk.corpus import wordnet
    scores = [
        meteor_score([r.split() for r in refs], pred.split(), wordnet=wordnet)
        for pred, refs in zip(predictions, _as_reference_lists(references))
    ]
    return sum(scores) / len(scores)
