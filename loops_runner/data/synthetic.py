"""Deterministic synthetic text: the default SFT dataset and the tokenizer corpus.

Everything here is a pure function of its seed, so two machines produce the
same conversations and therefore the same tokenizer. The tasks are small,
checkable string manipulations: a tiny model can learn their format (and
partly their content) in a few minutes on a CPU, which makes the loss curve
of the default run meaningful.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

WORDS: tuple[str, ...] = tuple(
    """
    apple river stone cloud green window garden paper silver orange planet music
    little yellow bright winter summer forest ocean mountain valley castle dragon
    pencil rabbit turtle candle mirror basket butter ginger lemon pepper tomato
    rocket engine signal bridge market harbor island desert meadow thunder shadow
    silent gentle simple quiet rapid golden purple violet crimson marble copper
    kitten puppy falcon salmon badger otter beaver spider monkey parrot zebra tiger
    lion horse camel goat sheep cow duck goose eagle owl fox wolf bear deer mouse
    table chair lamp door floor wall roof glass plate spoon knife fork bowl cup
    book letter story poem song dance game puzzle riddle answer question number
    happy sad calm brave clever kind proud shy tired eager curious careful honest
    red blue black white brown pink gray gold
    run walk jump swim read write sing draw cook bake build paint climb sleep dream
    think learn teach speak listen watch carry throw catch open close start finish
    north south east west morning evening night noon today tomorrow yesterday
    water fire earth wind light sound color shape circle square triangle line point
    city village road street house school office station train plane ship car bike
    coffee tea bread cheese rice soup salad honey sugar salt milk juice cake cookie
    """.split()
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")

Conversation = dict[str, list[dict[str, str]]]


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Reverse the word: {word}", word[::-1]


def _uppercase(rng: random.Random) -> tuple[str, str]:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    return f"Write in capitals: {words}", words.upper()


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return f"What is {a} + {b}?", str(a + b)


def _sort(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(2, 4))
    return f"Sort alphabetically: {' '.join(words)}", " ".join(sorted(words))


def _repeat(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    times = rng.randint(2, 4)
    return f"Say {word} {NUMBER_WORDS[times]} times.", " ".join([word] * times)


def _count(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"How many letters are in {word}?", str(len(word))


def _first_letters(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(2, 4))
    return f"First letters of: {' '.join(words)}", "".join(w[0] for w in words)


TASKS: tuple[Callable[[random.Random], tuple[str, str]], ...] = (
    _reverse, _uppercase, _add, _sort, _repeat, _count, _first_letters,
)


def conversations(count: int, seed: int = 0) -> list[Conversation]:
    """``count`` single-turn chats ``{"messages": [user, assistant]}``."""
    rng = random.Random(seed)
    out: list[Conversation] = []
    for _ in range(count):
        prompt, answer = rng.choice(TASKS)(rng)
        out.append({"messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]})
    return out


def _sentences(rng: random.Random, count: int) -> Iterator[str]:
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 999)))
        sentence = " ".join(words)
        yield sentence[0].upper() + sentence[1:] + rng.choice(".!?")


def tokenizer_corpus(seed: int = 1234) -> list[str]:
    """Text the built-in tokenizer is trained on: task chats plus free sentences."""
    rng = random.Random(seed)
    # Chats rendered the way the chat template renders them, so role names
    # and the newline after them become single tokens.
    lines = [
        "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in chat["messages"])
        for chat in conversations(6000, seed=seed)
    ]
    lines.extend("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                 for _ in range(200))
    lines.extend(_sentences(rng, 6000))
    lines.extend(str(n) for n in range(1000))
    return lines
