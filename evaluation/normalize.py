"""Answer normalisation of the official VQA evaluation (GT-Vision-Lab `vqaEval.py`).

Written from the published rules, not copied: punctuation is removed (or turned into a space),
number words become digits, articles are dropped and unapostrophised contractions get their
apostrophe back. The rules' quirks are kept on purpose, since scores are only comparable when
the normalisation is the same:

- a punctuation mark is deleted (not spaced) when it touches a space anywhere in the text, or
  when the text holds a digit-comma-digit group;
- the period regex `(?!<=\\d)(\\.)(?!\\d)` is a negative *lookahead* for the literal "<=" plus a
  digit (a typo for a lookbehind), so "2.5" keeps its point but "1." loses it; the official call
  passes `re.UNICODE` as the replacement count, so at most 32 periods go.
"""

import re

# Punctuation the official evaluation strips; "'" and ":" stay (contractions, times).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# Contractions written without their apostrophe, and the official spelling they map to.
# Keys are matched against lower-cased words, so the few capitalised keys of the official table
# ("Im", "Ive", "Id've", "I'dve") can never match there and are left out.
_CONTRACTION_GROUPS = {
    "n't": "ai are ca could did does do had has have is might must need ought sha should was were wo would",
    "'ve": "could might must should would who what where you we they",
    "'ll": "how it somebody someone something what who why you they",
    "'re": "there they what why you",
    "'d": "he how it someone something there they where who you",
    "'s": "he how somebody someone that there what when where who why",
}
_EXTRA_CONTRACTIONS = {
    "maam": "ma'am",
    "oclock": "o'clock",
    "twas": "'twas",
    "notve": "not've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    # The official table maps this one *away* from the apostrophe; kept for parity.
    "somebody'd": "somebodyd",
}


def _build_contractions() -> dict[str, str]:
    table = {}
    for suffix, stems in _CONTRACTION_GROUPS.items():
        for stem in stems.split():
            full = stem + suffix
            table[full.replace("'", "")] = full
    # Official entries that are neither "<stem><suffix>" nor in the groups above.
    table.update({"let's": "let's", "she's": "she's"})
    table.update(_EXTRA_CONTRACTIONS)
    return table


CONTRACTIONS = _build_contractions()

_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_MAX_PERIODS_REMOVED = int(re.UNICODE)  # the official `sub(..., re.UNICODE)` count argument: 32


def process_punctuation(text: str) -> str:
    """Deletes or spaces out punctuation as the official VQA evaluation does."""
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if touches_space or delete_all else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """Lower-cases, maps number words to digits, drops articles, restores contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """The full normalisation the official evaluation applies to a predicted answer."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))
