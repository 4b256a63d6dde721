"""The built-in task families: generators with graded difficulty, and their checkers.

Each family turns ``(rng, difficulty)`` into a question with one exact answer.
Difficulty 1 is what the pretrained ``tiny`` mostly gets right, 3 what it
mostly gets wrong, so every recipe (SFT, RL, DPO, distillation, eval) has room
to show learning. Everything is a pure function of the generator's state.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from loops_runner.tasks.words import NUMBER_WORDS, WORDS, words_of_length

Generator = Callable[[random.Random, int], tuple[str, str]]
# (question, right answer, rng) -> a plausible answer that is wrong
WrongAnswer = Callable[[str, str, random.Random], str]


@dataclass(frozen=True)
class TaskFamily:
    """One kind of question: how to make it, and how an answer is compared."""

    name: str
    description: str
    generate: Generator
    wrong_answer: WrongAnswer
    # Numbers compare as integers ("07" == "7"); text compares after normalising
    # whitespace and, unless case matters for the task, letter case.
    numeric: bool = False
    case_sensitive: bool = False


def _clamp(difficulty: int) -> int:
    return min(3, max(1, difficulty))


# -- generators ------------------------------------------------------------------


def _addition(rng: random.Random, difficulty: int) -> tuple[str, str]:
    high = (9, 49, 499)[_clamp(difficulty) - 1]
    a, b = rng.randint(0, high), rng.randint(0, high)
    return f"What is {a} + {b}?", str(a + b)


def _subtraction(rng: random.Random, difficulty: int) -> tuple[str, str]:
    high = (9, 49, 499)[_clamp(difficulty) - 1]
    a, b = sorted((rng.randint(0, high), rng.randint(0, high)), reverse=True)
    return f"What is {a} - {b}?", str(a - b)


def _larger(rng: random.Random, difficulty: int) -> tuple[str, str]:
    high = (9, 99, 999)[_clamp(difficulty) - 1]
    a, b = rng.sample(range(high + 1), 2)
    return f"Which is larger: {a} or {b}?", str(max(a, b))


def _reverse(rng: random.Random, difficulty: int) -> tuple[str, str]:
    word = rng.choice(words_of_length(*((3, 4), (5, 6), (7, 12))[_clamp(difficulty) - 1]))
    return f"Reverse the word: {word}", word[::-1]


def _capitals(rng: random.Random, difficulty: int) -> tuple[str, str]:
    words = " ".join(rng.choice(WORDS) for _ in range(_clamp(difficulty)))
    return f"Write in capitals: {words}", words.upper()


def _count_letters(rng: random.Random, difficulty: int) -> tuple[str, str]:
    word = rng.choice(words_of_length(*((3, 4), (5, 6), (7, 12))[_clamp(difficulty) - 1]))
    return f"How many letters are in {word}?", str(len(word))


def _sort_words(rng: random.Random, difficulty: int) -> tuple[str, str]:
    words = rng.sample(WORDS, _clamp(difficulty) + 1)
    return f"Sort alphabetically: {' '.join(words)}", " ".join(sorted(words))


def _first_letters(rng: random.Random, difficulty: int) -> tuple[str, str]:
    words = rng.sample(WORDS, _clamp(difficulty) + 1)
    return f"First letters of: {' '.join(words)}", "".join(w[0] for w in words)


def _repeat(rng: random.Random, difficulty: int) -> tuple[str, str]:
    word = rng.choice(WORDS)
    times = rng.randint(*((2, 2), (3, 3), (4, 5))[_clamp(difficulty) - 1])
    return f"Say {word} {NUMBER_WORDS[times]} times.", " ".join([word] * times)


def _last_word(rng: random.Random, difficulty: int) -> tuple[str, str]:
    words = rng.sample(WORDS, _clamp(difficulty) + 2)
    return f"Last word of: {' '.join(words)}", words[-1]


# -- plausible wrong answers (for preference pairs) --------------------------------


def _wrong_number(question: str, answer: str, rng: random.Random) -> str:
    value = int(answer)
    offsets = [o for o in (-10, -2, -1, 1, 2, 10) if value + o >= 0]
    return str(value + rng.choice(offsets))


def _wrong_letters(question: str, answer: str, rng: random.Random) -> str:
    """Swap two differing letters, or drop one: close to right, still wrong."""
    letters = list(answer)
    positions = [i for i in range(len(letters) - 1) if letters[i] != letters[i + 1]]
    if positions:
        i = rng.choice(positions)
        letters[i], letters[i + 1] = letters[i + 1], letters[i]
        return "".join(letters)
    return answer[:-1] if len(answer) > 1 else answer + answer


def _wrong_word_order(question: str, answer: str, rng: random.Random) -> str:
    words = answer.split()
    if len(set(words)) > 1:
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        return " ".join(shuffled)
    return " ".join(words[:-1]) if len(words) > 1 else answer + " " + answer


def _wrong_capitals(question: str, answer: str, rng: random.Random) -> str:
    return answer.lower() if rng.random() < 0.5 else answer.title()


def _wrong_smaller(question: str, answer: str, rng: random.Random) -> str:
    """The other number of the question: the mistake a model actually makes."""
    numbers = re.findall(r"\d+", question)
    return next(n for n in numbers if n != answer)


def _wrong_other_word(question: str, answer: str, rng: random.Random) -> str:
    """Another word of the list, else any other word."""
    listed = question.split(":", 1)[-1].split()
    candidates = [w for w in listed if w != answer] or [w for w in WORDS if w != answer]
    return rng.choice(candidates)


FAMILIES: dict[str, TaskFamily] = {
    family.name: family
    for family in (
        TaskFamily("addition", "add two non-negative integers", _addition, _wrong_number,
                   numeric=True),
        TaskFamily("subtraction", "subtract a smaller integer from a larger one", _subtraction,
                   _wrong_number, numeric=True),
        TaskFamily("larger", "pick the larger of two integers", _larger, _wrong_smaller,
                   numeric=True),
        TaskFamily("reverse", "spell a word backwards", _reverse, _wrong_letters),
        TaskFamily("capitals", "rewrite words in capital letters", _capitals, _wrong_capitals,
                   case_sensitive=True),
        TaskFamily("count_letters", "count the letters of a word", _count_letters,
                   _wrong_number, numeric=True),
        TaskFamily("sort_words", "sort words alphabetically", _sort_words, _wrong_word_order),
        TaskFamily("first_letters", "join the first letters of words", _first_letters,
                   _wrong_letters),
        TaskFamily("repeat", "repeat a word a given number of times", _repeat,
                   _wrong_word_order),
        TaskFamily("last_word", "name the last word of a list", _last_word, _wrong_other_word),
    )
}
