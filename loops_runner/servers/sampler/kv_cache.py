"""A slot-based KV cache that lets sequences join and leave a running batch.

Each sequence owns a *slot*: one row of every layer's key/value tensor
``[slots, kv_heads, capacity, head_dim]``, filled from position 0. A forward
pass names the slots of its rows and the positions it writes, so rows of very
different lengths decode together; attention reads each row's prefix through a
mask built from those positions. The cache plugs into Hugging Face models as a
``transformers.Cache`` (only ``update`` is used), so the model code runs
unchanged.
"""

from __future__ import annotations

import torch
from transformers import Cache


class SlotKVCache(Cache):
    def __init__(self, *, device: torch.device, dtype: torch.dtype, slots: int,
                 capacity: int) -> None:
        # Bypass Cache.__init__'s layer bookkeeping: this class owns its storage.
        self.layers = []
        self.layer_class_to_replicate = None
        self.offloading = False
        self.device = device
        self.dtype = dtype
        self.slots = slots
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        # Set by ``bind`` before each forward.
        self._rows: torch.Tensor | None = None
        self._row_slice: slice | None = None
        self._positions: torch.Tensor | None = None
        self._kv_length = 0

    # -- sizing ---------------------------------------------------------------

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def ensure(self, slots: int, capacity: int) -> None:
        """Grow (never shrink) to hold ``slots`` rows of ``capacity`` positions."""
        if slots <= self.slots and capacity <= self.capacity:
            return
        new_slots, new_capacity = max(slots, self.slots), max(capacity, self.capacity)
        for tensors in (self.keys, self.values):
            for index, old in enumerate(tensors):
                grown = old.new_zeros((new_slots, old.shape[1], new_capacity, old.shape[3]))
                grown[: old.shape[0], :, : old.shape[2]] = old
                tensors[index] = grown
        self.slots, self.capacity = new_slots, new_capacity

    def reset(self, slots: int, capacity: int) -> None:
        """Drop all storage (an idle engine gives its memory back)."""
        self.keys, self.values = [], []
        self.slots, self.capacity = slots, capacity

    # -- per forward ----------------------------------------------------------

    def bind(self, rows: list[int], positions: torch.Tensor, kv_length: int) -> None:
        """Rows (slot ids) of the next forward, their write positions ``[rows, q]``,
        and how many cached positions attention reads."""
        self._rows = torch.tensor(rows, device=self.device, dtype=torch.long)
        first = rows[0] if rows else 0
        contiguous = bool(rows) and rows == list(range(first, first + len(rows)))
        # A contiguous run of slots is read through a view instead of a gather.
        self._row_slice = slice(first, first + len(rows)) if contiguous else None
        self._positions = positions
        self._kv_length = kv_length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._rows is not None and self._positions is not None, "bind() first"
        while len(self.keys) <= layer_idx:
            # Lazily shaped from the first keys seen, so any kv-head layout works.
            shape = (self.slots, key_states.shape[1], self.capacity, key_states.shape[3])
            self.keys.append(torch.zeros(shape, device=self.device, dtype=self.dtype))
            vshape = (self.slots, value_states.shape[1], self.capacity, value_states.shape[3])
            self.values.append(torch.zeros(vshape, device=self.device, dtype=self.dtype))
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        rows = self._rows[:, None]
        # [rows, heads, q, dim] -> [rows, q, heads, dim] to match the index layout.
        keys[rows, :, self._positions] = key_states.transpose(1, 2).to(self.dtype)
        values[rows, :, self._positions] = value_states.transpose(1, 2).to(self.dtype)
        if self._row_slice is not None:
            return (keys[self._row_slice, :, : self._kv_length],
                    values[self._row_slice, :, : self._kv_length])
        return (keys[self._rows, :, : self._kv_length],
                values[self._rows, :, : self._kv_length])

    # -- slot management -----------------------------------------------------

    def copy_slot(self, source: int, targets: list[int], length: int) -> None:
        """Share a prefilled prompt: copy ``source``'s first ``length`` positions."""
        if not targets or not self.keys:
            return
        index = torch.tensor(targets, device=self.device)
        for tensors in (self.keys, self.values):
            for tensor in tensors:
                tensor[index, :, :length] = tensor[source, :, :length]

    def move_slot(self, source: int, target: int, length: int) -> None:
        for tensors in (self.keys, self.values):
            for tensor in tensors:
                tensor[target, :, :length] = tensor[source, :, :length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._kv_length

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"SlotKVCache(slots={self.slots}, capacity={self.capacity})"


def attention_masks(
    positions: torch.Tensor, kv_length: int, *, sliding_window: int | None,
    needs_sliding: bool, additive_dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    """Masks for rows whose queries sit at ``positions`` ``[rows, q]``.

    A query at position p sees cached positions ``0..p`` of its own row (and,
    for sliding layers, only the last ``window`` of them). Boolean for SDPA
    (True = attend); additive floats when ``additive_dtype`` is given (eager).
    """
    keys = torch.arange(kv_length, device=positions.device)
    query = positions[:, None, :, None]  # [rows, 1, q, 1]
    full = keys[None, None, None, :] <= query
    masks = {"full_attention": full}
    if needs_sliding:
        window = sliding_window or kv_length
        masks["sliding_attention"] = full & (keys[None, None, None, :] > query - window)
    if additive_dtype is not None:
        minimum = torch.finfo(additive_dtype).min
        masks = {
            name: torch.zeros(mask.shape, dtype=additive_dtype, device=mask.device)
            .masked_fill(~mask, minimum)
            for name, mask in masks.items()
        }
    return masks
