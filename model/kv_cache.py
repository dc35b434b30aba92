"""A full-attention KV cache layer with room reserved for the tokens to come (engine only).

transformers' `DynamicLayer` grows by `torch.cat` at every decoding step, which copies the whole
cache each time: for a batch of 8 prompts of ~1.7k tokens it was the largest cost of batched
decoding on CPU after the experts. This layer writes each step's keys and values in place into a
buffer sized for the prompt plus the token budget, and hands attention a view of the filled part.
Imported lazily by `model.engine` (the API process never imports torch).
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, reserve: int) -> None:
        super().__init__()
        batch, heads, filled, dim = keys.shape
        self._keys = keys.new_empty((batch, heads, filled + reserve, dim))
        self._values = values.new_empty((batch, heads, filled + reserve, values.shape[-1]))
        self._keys[:, :, :filled] = keys
        self._values[:, :, :filled] = values
        self._filled = filled
        self.device = keys.device
        self.is_initialized = True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._keys[:, :, : self._filled]
        self.values = self._values[:, :, : self._filled]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._filled + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2]:  # past the reserve: grow as transformers does
            self._keys = self._values = None
            return super().update(key_states, value_states, *args, **kwargs)
        self._keys[:, :, self._filled:end] = key_states
        self._values[:, :, self._filled:end] = value_states
        self._filled = end
        self._expose()
        return self.keys, self.values
