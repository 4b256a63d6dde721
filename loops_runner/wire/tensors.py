"""TensorData: a tensor as JSON (flat row-major data, dtype name, shape).

JSON has no NaN, so in float tensors ``null`` stands for NaN in both
directions. Nested lists are accepted and flattened; after validation ``data``
is always flat and matches ``shape``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, field_serializer, model_validator

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64"})
# Inclusive value ranges of the integer dtypes a client may send.
INT_DTYPE_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
BOOL_DTYPES = frozenset({"bool"})
ALLOWED_DTYPES = FLOAT_DTYPES | frozenset(INT_DTYPE_RANGES) | BOOL_DTYPES


def _flatten(data: list[Any]) -> tuple[list[Any], list[int]]:
    """Flatten nested lists; return the values and the nested shape found."""
    if not any(isinstance(v, list) for v in data):
        return data, [len(data)]
    flat: list[Any] = []
    inner_shape: list[int] | None = None
    for row in data:
        if not isinstance(row, list):
            raise ValueError("nested data mixes lists and scalars at the same depth")
        row_flat, row_shape = _flatten(row)
        if inner_shape is None:
            inner_shape = row_shape
        elif row_shape != inner_shape:
            raise ValueError(f"ragged nested data: rows of shape {inner_shape} and {row_shape}")
        flat.extend(row_flat)
    return flat, [len(data), *(inner_shape or [0])]


def _check_values(flat: list[Any], dtype: str) -> None:
    if dtype in FLOAT_DTYPES:
        for i, v in enumerate(flat):
            if v is None:
                continue
            if type(v) is bool or not isinstance(v, int | float):
                raise ValueError(f"data[{i}] = {v!r} is not a number (dtype {dtype})")
        return
    if dtype in BOOL_DTYPES:
        for i, v in enumerate(flat):
            if type(v) is not bool and v not in (0, 1):
                raise ValueError(f"data[{i}] = {v!r} is not a boolean (dtype bool)")
        return
    low, high = INT_DTYPE_RANGES[dtype]
    for i, v in enumerate(flat):
        if type(v) is bool or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                continue
            raise ValueError(f"data[{i}] = {v!r} is not an integer (dtype {dtype})")
        if not low <= v <= high:
            raise ValueError(f"data[{i}] = {v} is outside the range of {dtype} [{low}, {high}]")


class TensorData(BaseModel):
    """A tensor on the wire: ``{"data": [...], "dtype": "float32", "shape": [N]}``."""

    model_config = ConfigDict(extra="ignore")

    data: list[Any]
    dtype: str
    shape: list[int] | None = None

    @model_validator(mode="after")
    def _validate_layout(self) -> Self:
        if self.dtype not in ALLOWED_DTYPES:
            allowed = ", ".join(sorted(ALLOWED_DTYPES))
            raise ValueError(f"dtype {self.dtype!r} is not supported; allowed: {allowed}")
        flat, nested_shape = _flatten(self.data)
        shape = self.shape if self.shape is not None else nested_shape
        if any(d < 0 for d in shape):
            raise ValueError(f"shape {shape} has a negative dimension")
        expected = math.prod(shape)
        if expected != len(flat):
            raise ValueError(
                f"shape {shape} needs {expected} values but data has {len(flat)}"
            )
        _check_values(flat, self.dtype)
        if self.dtype in FLOAT_DTYPES:
            flat = [float("nan") if v is None else float(v) for v in flat]
        elif self.dtype in BOOL_DTYPES:
            flat = [bool(v) for v in flat]
        else:
            flat = [int(v) for v in flat]
        # Bypass validate_assignment-style recursion: these are plain fields.
        object.__setattr__(self, "data", flat)
        object.__setattr__(self, "shape", list(shape))
        return self

    @field_serializer("data")
    def _nan_as_null(self, data: list[Any]) -> list[Any]:
        if self.dtype not in FLOAT_DTYPES:
            return data
        return [None if isinstance(v, float) and not math.isfinite(v) else v for v in data]

    # -- conveniences -------------------------------------------------------

    @property
    def numel(self) -> int:
        return len(self.data)

    def tolist(self) -> list[Any]:
        """The flat values (NaN for masked float positions)."""
        return list(self.data)

    def first_dim(self) -> int:
        assert self.shape is not None
        return self.shape[0] if self.shape else 1

    @classmethod
    def from_list(cls, data: list[Any], dtype: str = "float32") -> TensorData:
        """Build from a (possibly nested) Python list; the shape is inferred."""
        return cls(data=data, dtype=dtype)

    def to_torch(self) -> torch.Tensor:
        import torch

        torch_dtype = getattr(torch, self.dtype)
        assert self.shape is not None
        return torch.tensor(self.data, dtype=torch_dtype).reshape(self.shape)

    @classmethod
    def from_torch(cls, tensor: torch.Tensor) -> TensorData:
        dtype = str(tensor.dtype).removeprefix("torch.")
        values = tensor.detach().cpu().reshape(-1).tolist()
        return cls(data=values, dtype=dtype, shape=list(tensor.shape))
