"""Model input: chunks of encoded text (and images), and the training Datum."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from loops_runner.wire.tensors import TensorData


class EncodedTextChunk(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["encoded_text"] = "encoded_text"
    tokens: list[int]

    @property
    def length(self) -> int:
        return len(self.tokens)


class ImageChunk(BaseModel):
    """An inline image. ``data`` travels as standard (``+/``) base64."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["image"] = "image"
    data: bytes
    format: Literal["png", "jpeg"]
    expected_tokens: int = Field(ge=1)

    @field_validator("data", mode="before")
    @classmethod
    def _decode(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"image data is not standard base64: {exc}") from exc
        return value

    @field_serializer("data", when_used="json")
    def _encode(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")

    @property
    def length(self) -> int:
        return self.expected_tokens


ModelInputChunk = Annotated[EncodedTextChunk | ImageChunk, Field(discriminator="type")]


class ModelInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    chunks: list[ModelInputChunk] = Field(default_factory=list)

    @classmethod
    def from_ints(cls, tokens: list[int]) -> Self:
        return cls(chunks=[EncodedTextChunk(tokens=list(tokens))])

    @classmethod
    def empty(cls) -> Self:
        return cls(chunks=[])

    @property
    def length(self) -> int:
        return sum(chunk.length for chunk in self.chunks)

    def has_images(self) -> bool:
        return any(isinstance(chunk, ImageChunk) for chunk in self.chunks)

    def to_ints(self) -> list[int]:
        tokens: list[int] = []
        for chunk in self.chunks:
            if not isinstance(chunk, EncodedTextChunk):
                raise TypeError(f"cannot convert a {chunk.type!r} chunk to token ids")
            tokens.extend(chunk.tokens)
        return tokens

    def append(self, chunk: EncodedTextChunk | ImageChunk) -> Self:
        return type(self)(chunks=[*self.chunks, chunk])

    def append_int(self, token: int) -> Self:
        return self.append(EncodedTextChunk(tokens=[token]))


class ExternalRef(BaseModel):
    """A logical reference (``bt://loops:<run>/sequences/<id>``) to an out-of-band payload."""

    uri: str
    version: int = Field(ge=1)


class Datum(BaseModel):
    """One training sequence and the per-position inputs of its loss."""

    model_config = ConfigDict(extra="ignore")

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData] = Field(default_factory=dict)
    routed_experts_ref: ExternalRef | None = None
