"""Evaluation metrics against hand-computed values."""

import math

import pytest

from unimoe_evaluation.choice import choice_correct, extract_choice, parse_options, reference_letter
from unimoe_evaluation.cider import cider_d
from unimoe_evaluation.normalize import CONTRACTIONS, normalize_answer, process_punctuation
from unimoe_evaluation.pope import pope_scores, yes_no
from unimoe_evaluation.text_metrics import MetricUnavailable, bleu, exact_match, meteor, rouge_l
from unimoe_evaluation.vqa import aokvqa_accuracy, vqa_accuracy

# ---------------------------------------------------------------- VQA normalisation and accuracy


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Cigarette.", "cigarette"),  # final period goes, lower-cased
        ("Two dogs", "2 dogs"),  # number words become digits
        ("The red one", "red 1"),  # articles dropped
        ("a dog", "dog"),
        ("dont know", "don't know"),  # contractions get their apostrophe back
        ("black/white", "black white"),  # punctuation not touching a space becomes a space
        ("yes, it is", "yes it is"),  # ... and is deleted when it touches one
        ("1,000", "1000"),  # a digit-comma-digit group deletes all punctuation
        ("2.5", "2.5"),  # a period before a digit stays
        ("  left\tside\n", "left side"),
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_contraction_table_entries():
    # Spot checks of the official table, including its irregular entries.
    assert CONTRACTIONS["wont"] == "won't"
    assert CONTRACTIONS["cant"] == "can't"
    assert CONTRACTIONS["aint"] == "ain't"
    assert CONTRACTIONS["shant"] == "shan't"
    assert CONTRACTIONS["yall'd've"] == "y'all'd've"
    assert CONTRACTIONS["somebody'd"] == "somebodyd"
    assert "thatll" not in CONTRACTIONS and "shes" not in CONTRACTIONS
    assert len(CONTRACTIONS) == 116  # the official table's lower-case keys


def test_punctuation_only_on_text_with_the_mark():
    assert process_punctuation("a-b") == "a b"
    assert process_punctuation("a - b") == "a  b"


def test_vqa_accuracy_leave_one_out():
    assert vqa_accuracy("Cigarette.", ["cigarette"] * 10) == 1.0
    # 2 of 10 humans: leaving out one of the 2 leaves 1 match (1/3), leaving out another 2 (2/3).
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert vqa_accuracy("yes", ["yes"] * 4 + ["no"] * 6) == 1.0
    assert vqa_accuracy("maybe", ["yes"] * 4 + ["no"] * 6) == 0.0


def test_vqa_accuracy_normalises_prediction_fully_references_only_of_punctuation():
    assert vqa_accuracy("Two dogs", ["2 dogs"] * 10) == 1.0
    # Official quirk: agreeing references are left as they are, so "two" never matches "2".
    assert vqa_accuracy("two", ["two"] * 10) == 0.0
    # Disagreeing references lose punctuation (not number words): "black-white" -> "black white".
    assert vqa_accuracy("black white", ["black-white"] * 3 + ["grey"] * 7) == pytest.approx((3 * (2 / 3) + 7) / 10)


def test_vqa_accuracy_rejects_a_single_answer_string():
    with pytest.raises(ValueError, match="at least 2 human answers"):
        vqa_accuracy("cat", "cat")
    with pytest.raises(ValueError, match="at least 2"):
        vqa_accuracy("cat", ["cat"])


def test_aokvqa_accuracy_min_matches_over_three():
    assert aokvqa_accuracy("cigarette", ["cigarette"] * 2 + ["cigar"] * 8) == pytest.approx(2 / 3)
    assert aokvqa_accuracy("Cigar.", ["cigarette"] * 2 + ["cigar"] * 8) == 1.0
    assert aokvqa_accuracy("pipe", ["cigarette"] * 10) == 0.0


# ---------------------------------------------------------------------------- multiple choice

OPTIONS = {"A": "cat", "B": "dog", "C": "dark red", "D": "red"}


def test_parse_options_official_mmbench_layout():
    prompt = "<image>\nWhich animal?\nOptions:\nA.a cat\nB.a dog\nAnswer the question using a single word or phrase."
    assert parse_options(prompt) == {"A": "a cat", "B": "a dog"}
    assert parse_options("(A) yes\n(B) no\n(C) maybe") == {"A": "yes", "B": "no", "C": "maybe"}
    assert parse_options("A. only one option") == {}
    assert parse_options("B. starts at B\nC. then C") == {}


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("b", None),  # lower-case letters are words, not options
        ("B. dog", "B"),
        ("C) dark red", "C"),
        ("The answer is D.", "D"),
        ("Answer: (A)", "A"),
        ("The answer is a dog.", "B"),  # "a" is an article, not option A
        ("I think it is B", "B"),  # "I" is a pronoun
        ("A dog is in the picture", "B"),  # "A" is an article; the option text decides
        ("dog", "B"),
        ("Dark red!", "C"),
        ("it is dark red", "C"),  # "red" is inside "dark red": the longer option wins
        ("a cat and a dog", None),  # two options named
        ("B or C", None),
        ("a horse", None),
        ("", None),
    ],
)
def test_extract_choice(prediction, letter):
    assert extract_choice(prediction, OPTIONS) == letter


def test_reference_letter_and_choice_correct():
    assert reference_letter("B", OPTIONS) == "B"
    assert reference_letter("(d)", OPTIONS) == "D"
    assert reference_letter("Dark red", OPTIONS) == "C"
    assert choice_correct("The answer is B.", "dog", OPTIONS)
    assert not choice_correct("A", "B", OPTIONS)
    assert choice_correct("Its environment.", "its environment", None)  # free-text fallback
    with pytest.raises(ValueError, match="neither an option letter"):
        choice_correct("A", "a horse", OPTIONS)


def test_options_as_list():
    assert extract_choice("yes", ["no", "yes"]) == "B"


# ---------------------------------------------------------------------------------------- POPE


def test_pope_yes_no_rule():
    assert yes_no("Yes, there is a dog.") == "yes"
    assert yes_no("No.") == "no"
    assert yes_no("There is not a dog in the image.") == "no"
    assert yes_no("Yes. No dogs were harmed.") == "yes"  # only the first sentence counts
    assert yes_no("Nothing") == "yes"


def test_pope_scores_hand_counted():
    predictions = ["Yes, there is.", "No.", "There is not a dog.", "yes", "No, there is no cat."]
    labels = ["yes", "no", "yes", "no", "no"]
    # yes/no answers: yes, no, no, yes, no -> TP 1, FP 1, TN 2, FN 1.
    scores = pope_scores(predictions, labels)
    assert scores == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.6, "yes_ratio": 0.4})


def test_pope_rejects_other_labels():
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        pope_scores(["yes"], ["maybe"])


# -------------------------------------------------------------------------------------- CIDEr-D


def test_cider_d_unigram_tfidf_by_hand():
    # N = 2 items, so idf = log 2 - log df: "a" is in both reference sets (weight 0), every
    # other n-gram in one (or none: df floor 1), weight tf * log 2 =: L.
    candidates = ["a cat", "the bird"]
    references = [["a cat", "a dog"], ["a bird"]]
    # Item 1: cos("a cat", "a cat") = 1, cos with "a dog" = 0  -> 10 * (1 + 0) / 2 = 5.
    # Item 2: cand (the: L, bird: L), ref (a: 0, bird: L): L^2 / (sqrt(2) L * L) -> 10 / sqrt(2).
    corpus, items = cider_d(candidates, references, max_n=1)
    assert items == pytest.approx([5.0, 10 / math.sqrt(2)])
    assert corpus == pytest.approx((5.0 + 10 / math.sqrt(2)) / 2)


def test_cider_d_bigrams_average_over_orders():
    corpus, items = cider_d(["a cat", "the bird"], [["a cat", "a dog"], ["a bird"]], max_n=2)
    # Item 1 bigram "a cat" matches ref 1 exactly: orders (1, 1) and (0, 0) -> 10 * (2/2) / 2.
    # Item 2 shares no bigram: orders (1/sqrt 2, 0) -> 10 * (1/sqrt 2) / 2 / 1.
    assert items == pytest.approx([5.0, 10 / math.sqrt(2) / 2])


def test_cider_d_clipping_and_length_penalty():
    # "cat cat" vs "cat": clipped dot min(2L, L) * L = L^2 over norms 2L * L -> 0.5, and a
    # length gap of 1 word damps it by exp(-1 / (2 * 6^2)). No bigram in the reference -> 0.
    _, items = cider_d(["cat cat", "dog"], [["cat"], ["dog"]], max_n=2)
    assert items == pytest.approx([10 * 0.5 * math.exp(-1 / 72) / 2, 10 * 1.0 / 2])


def test_cider_d_identical_captions_and_missing_orders():
    # Three-word captions have no 4-grams: that order contributes 0, so a perfect match is 7.5.
    corpus, items = cider_d(["a red car", "the blue sky"], [["a red car"], ["the blue sky"]])
    assert items == pytest.approx([7.5, 7.5])
    assert corpus == pytest.approx(7.5)


def test_cider_d_tokenises_case_and_punctuation():
    _, items = cider_d(["A Cat!", "the bird"], [["a cat", "a dog"], ["a bird"]], max_n=1)
    assert items[0] == pytest.approx(5.0)


def test_cider_d_rejects_bad_references():
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d(["a"], ["a"])


# ------------------------------------------------------------------------------ overlap metrics


def test_exact_match_options():
    predictions, references = ["Yes.", "no", "A b"], ["yes", "No", "a c"]
    assert exact_match(predictions, references) == pytest.approx(2 / 3)
    assert exact_match(predictions, references, ignore_case=False, ignore_punctuation=False) == 0.0
    assert exact_match(["the cat"], ["cat"], regexes_to_ignore=[r"^the "]) == 1.0


def test_bleu_by_hand():
    # p1 5/5, p2 3/4, p3 2/3, p4 1/2 -> geometric mean 0.25^(1/4); brevity penalty exp(1 - 6/5).
    expected = 100 * 0.25**0.25 * math.exp(1 - 6 / 5)
    assert bleu(["the cat sat on mat"], ["the cat sat on the mat"]) == pytest.approx(expected, rel=1e-6)
    assert bleu(["the cat sat on the mat"], [["a b", "the cat sat on the mat"]]) == pytest.approx(100.0)


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 of 6 words each way.
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(5 / 6)
    # Several references: the best one counts.
    assert rouge_l(["a b"], [["x y", "a b"]]) == pytest.approx(1.0)


class _NoSynonyms:
    """A WordNet stand-in without synonyms: METEOR reduces to exact and stem matches."""

    def synsets(self, *args, **kwargs):
        return []


def test_meteor_by_hand_without_synonyms():
    # 3 of 3 words matched in 1 chunk: Fmean 1, penalty 0.5 * (1/3)^3.
    assert meteor(["the cat sat"], ["the cat sat"], wordnet=_NoSynonyms()) == pytest.approx(1 - 0.5 / 27)


def test_meteor_without_wordnet_data_is_unavailable():
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
        pytest.skip("WordNet is installed here")
    except LookupError:
        pass
    with pytest.raises(MetricUnavailable, match="WordNet"):
        meteor(["a"], ["a"])
