"""Deterministic synthetic text: the default SFT data, the tokenizer corpus, plain prose.

Everything here is a pure function of its seed, so two machines produce the
same conversations and therefore the same tokenizer and the same pretrained
``tiny``. Conversations come from the task registry's *train* split
(:mod:`loops_runner.tasks`), so no default dataset ever contains a held-out
evaluation question.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from loops_runner.tasks import FAMILIES, as_conversation, sample_rows
from loops_runner.tasks.words import WORDS

Conversation = dict[str, list[dict[str, str]]]

# A small grammar for plain prose: enough structure (agreement, word classes,
# clauses) that the pretrained model is a language model and not only a
# question-answer lookup table.
_ANIMALS = ("rabbit", "turtle", "kitten", "puppy", "falcon", "badger", "otter", "beaver",
            "spider", "monkey", "parrot", "zebra", "tiger", "lion", "horse", "camel", "goat",
            "sheep", "duck", "goose", "eagle", "owl", "fox", "wolf", "bear", "deer", "mouse",
            "dolphin", "penguin", "elephant", "squirrel")
_THINGS = ("apple", "stone", "window", "paper", "pencil", "candle", "mirror", "basket", "lamp",
           "book", "letter", "cup", "bowl", "plate", "blanket", "lantern", "compass", "umbrella",
           "balloon", "sandwich", "picture", "diamond", "treasure")
_PLACES = ("river", "garden", "forest", "ocean", "mountain", "valley", "castle", "market",
           "harbor", "island", "desert", "meadow", "city", "village", "school", "station",
           "kitchen", "library")
_ADJECTIVES = ("little", "bright", "quiet", "gentle", "golden", "purple", "clever", "brave",
               "happy", "tired", "curious", "careful", "honest", "silent", "rapid", "red", "blue",
               "green", "old", "small", "big")
_VERBS_PAST = ("found", "carried", "painted", "watched", "threw", "caught", "opened", "closed",
               "built", "read", "drew")
_MOTIONS = ("walked to", "ran to", "swam to", "flew over", "climbed", "slept near",
            "danced in", "sang in")
_TIMES = ("in the morning", "at night", "at noon", "in the evening", "today", "yesterday",
          "in winter", "in summer")


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("ch", "sh", "s", "x")) else "s")


def _noun_phrase(rng: random.Random, nouns: tuple[str, ...]) -> str:
    noun = rng.choice(nouns)
    if rng.random() < 0.5:
        noun = f"{rng.choice(_ADJECTIVES)} {noun}"
    return f"the {noun}"


def _sentence(rng: random.Random) -> str:
    subject = _noun_phrase(rng, _ANIMALS)
    kind = rng.randrange(5)
    if kind == 0:
        body = f"{subject} {rng.choice(_MOTIONS)} {_noun_phrase(rng, _PLACES)}"
    elif kind == 1:
        body = f"{subject} {rng.choice(_VERBS_PAST)} {_noun_phrase(rng, _THINGS)}"
    elif kind == 2:
        count = rng.randint(2, 9)
        things = _plural(rng.choice(_THINGS))
        body = f"{subject} saw {count} {things} near {_noun_phrase(rng, _PLACES)}"
    elif kind == 3:
        body = (f"{subject} {rng.choice(_VERBS_PAST)} {_noun_phrase(rng, _THINGS)} and "
                f"{rng.choice(_MOTIONS)} {_noun_phrase(rng, _PLACES)}")
    else:
        body = f"{subject} was {rng.choice(_ADJECTIVES)} {rng.choice(_TIMES)}"
    if rng.random() < 0.3:
        body = f"{body} {rng.choice(_TIMES)}"
    return body[0].upper() + body[1:] + "."


def prose(count: int, seed: int = 0) -> list[str]:
    """``count`` short paragraphs of one to three sentences."""
    rng = random.Random(f"prose-{seed}")
    return [" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))) for _ in range(count)]


def lexicon(seed: int = 0) -> list[str]:
    """Plain-text facts about every word: its letters, length, capitals, reversal.

    The chat tasks ask for these facts; a language model learns them from text
    (as real models learn spelling), so a held-out question about a word is a
    new question about known facts, not an impossible guess.
    """
    rng = random.Random(f"lexicon-{seed}")
    facts = []
    for word in WORDS:
        facts.extend([
            f"The word {word} is spelled {' '.join(word)}.",
            f"The word {word} has {len(word)} letters.",
            f"Backwards, {word} is {word[::-1]}.",
            f"In capitals, {word} is {word.upper()}.",
            f"The word {word} starts with {word[0]}.",
        ])
    rng.shuffle(facts)
    return facts


def conversations(count: int, seed: int = 0,
                  families: Sequence[str] | None = None) -> list[Conversation]:
    """``count`` single-turn chats ``{"messages": [user, assistant]}`` from the train split
    (of the default task mix unless ``families`` are given)."""
    return [as_conversation(row)
            for row in sample_rows(count, split="train", seed=seed, families=families)]


def render_chat(chat: Conversation) -> str:
    """A chat as the built-in chat template renders it (tokenizer and pretraining text)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                   for m in chat["messages"])


def tokenizer_corpus(seed: int = 1234) -> list[str]:
    """Text the built-in tokenizer is trained on: task chats, prose, words and numbers."""
    # Chats rendered the way the chat template renders them, so role names
    # and the newline after them become single tokens.
    # Every family of the registry, whatever the default mix: the tokenizer (and
    # so the shipped model) must not change when the default mix does.
    lines = [render_chat(chat) for chat in conversations(6000, seed=seed, families=list(FAMILIES))]
    lines.extend("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                 for _ in range(200))
    lines.extend(prose(3000, seed=seed))
    lines.extend(lexicon(seed=seed))
    lines.extend(WORDS)
    lines.extend(str(n) for n in range(1000))
    return lines
