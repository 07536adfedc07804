"""Multiple choice (MMBench, SEED, RACE-Audio, listening tests): option parsing, answer
extraction from free text, and accuracy.

Extraction tries, in order: a bare letter ("B", "(B)", "B."), a leading letter with a
delimiter ("B. a dog"), an explicit phrase ("the answer is B"), a single standalone option
letter, then the option texts (exact, then a unique contained option). Anything else is
unanswered and scores 0, as in MMBench's heuristic matching step (its ChatGPT fallback is not
reproduced).
"""

import re
from collections.abc import Mapping, Sequence

from .normalize import normalize_answer

_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.):：]\s*(.+?)\s*$")
_BARE_LETTER = re.compile(r"^\s*\(?([A-Z])\)?\s*[.:)]?\s*$")
_LEADING_LETTER = re.compile(r"^\s*\(?([A-Z])(?:\)|[.:,：])")
# Only the words are case-insensitive: "the answer is a dog" names no option.
_ANSWER_PHRASE = re.compile(r"\b(?i:answer|option|choice)\b\s*(?i:is|would be)?\s*[:：]?\s*\(?([A-Z])\b\)?")
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z'])\(?([A-Z])\)?(?![A-Za-z'])")
_WORDS = re.compile(r"[^\w\s]")


def parse_options(text: str) -> dict[str, str]:
    """Options written one per line ("A. text", "A) text", "(A) text", "A: text"), as in the
    official MMBench / SEED prompts. Returns {} unless the letters run A, B, C, ... in order."""
    options = {}
    for line in text.splitlines():
        match = _OPTION_LINE.match(line)
        if match and match.group(1) == chr(ord("A") + len(options)):
            options[match.group(1)] = match.group(2)
    return options if len(options) >= 2 else {}


def as_options(options: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """{letter: text} from a mapping, or from a list of option texts in A, B, C order."""
    if not options:
        return {}
    if isinstance(options, Mapping):
        return {str(key).strip().upper(): str(value) for key, value in options.items()}
    if isinstance(options, str):
        raise ValueError(f"options must be a list of texts or a {{letter: text}} mapping, got the string {options!r}")
    return {chr(ord("A") + i): str(text) for i, text in enumerate(options)}


def _plain(text: str) -> str:
    return " ".join(_WORDS.sub(" ", text.lower()).split())


def _standalone_letters(prediction: str, letters: set[str]) -> set[str]:
    found = set()
    for match in _STANDALONE_LETTER.finditer(prediction):
        letter = match.group(1)
        rest = prediction[match.end() :]
        # "A dog ..." / "I think ..." use the letter as a word, not as an option.
        if letter in ("A", "I") and re.match(r"\s+[a-z]", rest):
            continue
        if letter in letters:
            found.add(letter)
    return found


def _match_option_text(prediction: str, options: dict[str, str]) -> str | None:
    plain = _plain(prediction)
    texts = {letter: _plain(text) for letter, text in options.items()}
    exact = [letter for letter, text in texts.items() if text and text == plain]
    if len(exact) == 1:
        return exact[0]
    contained = [letter for letter, text in texts.items() if text and re.search(rf"\b{re.escape(text)}\b", plain)]
    # "dark red" contains "red": keep only candidates that no other candidate contains.
    maximal = [a for a in contained if not any(a != b and texts[a] in texts[b] for b in contained)]
    return maximal[0] if len(maximal) == 1 else None


def extract_choice(prediction: str, options: Mapping[str, str] | Sequence[str]) -> str | None:
    """The option letter a free-text prediction picks, or None when it picks none or several."""
    options = as_options(options)
    if not options:
        raise ValueError("extract_choice needs at least one option")
    letters = set(options)
    for pattern in (_BARE_LETTER, _LEADING_LETTER, _ANSWER_PHRASE):
        match = pattern.search(prediction)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    found = _standalone_letters(prediction, letters)
    if len(found) == 1:
        return found.pop()
    return _match_option_text(prediction, options) if not found else None


def reference_letter(reference: str, options: Mapping[str, str] | Sequence[str]) -> str | None:
    """The gold option letter, given as a letter ("B", "(B)") or as an option's text."""
    options = as_options(options)
    match = _BARE_LETTER.match(reference.upper())  # gold letters may be lower-case
    if match and match.group(1).upper() in options:
        return match.group(1).upper()
    plain = _plain(reference)
    exact = [letter for letter, text in options.items() if _plain(text) == plain]
    return exact[0] if len(exact) == 1 else None


def choice_correct(prediction: str, reference: str, options: Mapping[str, str] | Sequence[str] | None) -> bool:
    """Whether `prediction` picks the gold option. Without options (a free-text answer set),
    falls back to equality after the VQA answer normalisation."""
    options = as_options(options)
    if not options:
        return normalize_answer(prediction) == normalize_answer(reference)
    gold = reference_letter(reference, options)
    if gold is None:
        raise ValueError(f"reference {reference!r} is neither an option letter nor an option text of {options}")
    return extract_choice(prediction, options) == gold
