"""CIDEr-D (Vedantam et al., 2015), the variant the COCO caption evaluation reports as "CIDEr".

For each n = 1..4, a sentence is a vector of tf-idf weights over its n-grams:
`tf(g) * (log N - log max(1, df(g)))`, where N is the number of items (images / clips) in the
corpus and df(g) the number of items whose reference set contains g. A candidate's similarity to
one reference is the clipped cosine `sum_g min(c_g, r_g) * r_g / (|c| |r|)`, damped by a Gaussian
length penalty `exp(-(len_c - len_r)^2 / (2 sigma^2))` (sigma = 6); CIDEr-D_n is the mean over the
item's references, the item score is 10 x the mean over n, and the corpus score the mean over
items. No maintained offline package provides it (evaluate's CIDEr is a Hub script), so this is
our own, tested against hand-computed values. Tokenisation: lower-case, punctuation removed,
whitespace split (the COCO toolkit runs the Java PTB tokenizer instead).
"""

import math
import re
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = re.compile(r"[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _PUNCTUATION.sub(" ", text.lower()).split()


def _ngrams(words: list[str], max_n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


class _Vector:
    """tf-idf weights of one sentence, split by n-gram order, with per-order norms."""

    def __init__(self, counts: Counter, idf: dict[tuple, float], log_n: float, max_n: int, length: int):
        self.weights = [{} for _ in range(max_n)]
        for gram, tf in counts.items():
            self.weights[len(gram) - 1][gram] = tf * (log_n - idf.get(gram, 0.0))
        self.norms = [math.sqrt(sum(w * w for w in order.values())) for order in self.weights]
        self.length = length


def _similarity(cand: _Vector, ref: _Vector, sigma: float) -> list[float]:
    penalty = math.exp(-((cand.length - ref.length) ** 2) / (2 * sigma**2))
    sims = []
    for c_w, r_w, c_norm, r_norm in zip(cand.weights, ref.weights, cand.norms, ref.norms):
        dot = sum(min(w, r_w.get(g, 0.0)) * r_w.get(g, 0.0) for g, w in c_w.items())
        sims.append(dot / (c_norm * r_norm) * penalty if c_norm and r_norm else 0.0)
    return sims


def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], *, max_n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D of one candidate per item against that item's references.

    Returns (corpus score, per-item scores) on the COCO toolkit's scale (x10, not a percentage).
    """
    if len(candidates) != len(references) or not candidates:
        raise ValueError(
            f"CIDEr needs one candidate per reference set (> 0), got {len(candidates)} and {len(references)}"
        )
    if any(isinstance(refs, str) or not refs for refs in references):
        raise ValueError("every item needs a non-empty list of reference captions")
    ref_tokens = [[tokenize(r) for r in refs] for refs in references]
    ref_counts = [[_ngrams(words, max_n) for words in refs] for refs in ref_tokens]
    doc_freq = Counter(gram for refs in ref_counts for gram in set().union(*refs))
    idf = {gram: math.log(max(1.0, df)) for gram, df in doc_freq.items()}
    log_n = math.log(len(candidates))

    scores = []
    for cand, words_list, counts_list in zip(candidates, ref_tokens, ref_counts):
        cand_words = tokenize(cand)
        cand_vec = _Vector(_ngrams(cand_words, max_n), idf, log_n, max_n, len(cand_words))
        per_order = [0.0] * max_n
        for words, counts in zip(words_list, counts_list):
            ref_vec = _Vector(counts, idf, log_n, max_n, len(words))
            per_order = [a + b for a, b in zip(per_order, _similarity(cand_vec, ref_vec, sigma))]
        scores.append(10.0 * sum(per_order) / max_n / len(words_list))
    return sum(scores) / len(scores), scores
