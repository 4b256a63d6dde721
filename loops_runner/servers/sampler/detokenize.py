"""Incremental detokenization and stop strings.

Decoding the whole completion after every token costs O(n^2); instead only a
short window is re-decoded: the text of ``tokens[prefix:]`` minus the text of
``tokens[prefix:read]`` is what the newest tokens added. A window that ends in
an incomplete UTF-8 sequence (U+FFFD) waits for the next token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REPLACEMENT = "\ufffd"


def decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """``tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)``,
    as cheaply as the tokenizer allows.

    A fast (Rust) tokenizer's own ``decode`` is exactly that call minus the
    transformers wrapper's argument handling, which cost a streamed chunk more
    than the decoding itself (it runs on the event loop, twice per chunk, and
    in the engine's thread once per token of a request with stop strings).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and callable(getattr(backend, "decode", None)):
        def fast(tokens: list[int]) -> str:
            return backend.decode(tokens, skip_special_tokens=True)  # type: ignore[no-any-return]
        return fast

    def wrapped(tokens: list[int]) -> str:
        return tokenizer.decode(tokens, skip_special_tokens=True,  # type: ignore[no-any-return]
                                clean_up_tokenization_spaces=False)
    return wrapped


class IncrementalText:
    """The completion's text, grown token by token (special tokens skipped)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._decode = decoder(tokenizer)
        self.tokens: list[int] = []
        self.text = ""
        self._prefix = 0
        self._read = 0

    def window_text(self) -> str:
        """Text of the current context window (the part ``push``/``peek`` diff against)."""
        return self._decode(self.tokens[self._prefix:self._read])

    def peek(self, token: int, before: str | None = None) -> str | None:
        """The whole text if ``token`` came next; None while UTF-8 is incomplete."""
        if before is None:
            before = self.window_text()
        after = self._decode([*self.tokens[self._prefix:], token])
        if after.endswith(_REPLACEMENT) or len(after) < len(before):
            return None
        return self.text + after[len(before):]

    def push(self, token: int) -> str:
        """Add one token; return the text it completed (may be empty)."""
        return self.extend([token])

    def extend(self, tokens: list[int]) -> str:
        """Add tokens; return the text they completed (may be empty)."""
        self.tokens.extend(tokens)
        before = self._decode(self.tokens[self._prefix:self._read])
        after = self._decode(self.tokens[self._prefix:])
        if after.endswith(_REPLACEMENT) or len(after) < len(before):
            return ""
        added = after[len(before):]
        self._prefix, self._read = self._read, len(self.tokens)
        self.text += added
        return added


class StopStrings:
    """Finds the first stop string in the growing text.

    On a match the text is cut before the stop string (as vLLM does unless asked
    to keep it); the tokens up to and including the one that completed it stay.
    """

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.text = IncrementalText(tokenizer)
        self.longest = max((len(stop) for stop in self.stops), default=0)
        self.matched: str | None = None

    def push(self, token: int) -> bool:
        """Add a token; True once a stop string appeared."""
        start = len(self.text.text)
        added = self.text.push(token)
        if not added or self.matched is not None:
            return self.matched is not None
        search_from = max(0, start - self.longest + 1)
        window = self.text.text[search_from:]
        best: tuple[int, str] | None = None
        for stop in self.stops:
            found = window.find(stop)
            if found >= 0 and (best is None or found < best[0]):
                best = (found, stop)
        if best is None:
            return False
        self.matched = best[1]
        self.text.text = self.text.text[: search_from + best[0]]
        return True


class TextStream:
    """The text of one streamed choice, sent piece by piece.

    It replays what the engine does with the same tokens (``StopStrings`` when
    the request has stop strings), and holds back the last ``longest - 1``
    characters until they can no longer begin a stop string, so nothing sent
    is later cut. ``finish`` sends the rest of the engine's final text, so the
    pieces always add up to exactly the non-streamed answer.
    """

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.stops = StopStrings(tokenizer, stops) if stops else None
        self.plain = None if stops else IncrementalText(tokenizer)
        self.sent = ""

    def extend(self, tokens: list[int]) -> str:
        """Add the tokens that arrived; return the text that can be sent now."""
        if self.stops is not None:
            # Token by token, as the engine matched them: the cut must be the same.
            matched = any([self.stops.push(token) for token in tokens])
            text = self.stops.text.text
            safe = text if matched else \
                text[: max(len(self.sent), len(text) - self.stops.longest + 1)]
        else:
            assert self.plain is not None
            self.plain.extend(tokens)
            safe = self.plain.text
        piece = safe[len(self.sent):]
        self.sent = safe if len(safe) > len(self.sent) else self.sent
        return piece

    def finish(self, final_text: str) -> str:
        piece = final_text[len(self.sent):] if final_text.startswith(self.sent) else ""
        self.sent = final_text
        return piece
