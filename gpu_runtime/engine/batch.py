"""KV-cache surgery for continuous batching: merge newly prefilled rows into the running batch,
drop finished rows and cut padding columns that no row needs any more.

Rows are left-padded: every row's newest token sits in the last column, so one decode step feeds
one token per row. Padding columns carry zeros in the cache and 0 in the attention mask.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def cache_is_mergeable(cache: DynamicCache) -> bool:
    """Plain full-attention layers only; sliding-window or quantized layers keep extra state we cannot pad."""
    return all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers)


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class KVBatch:
    """A decode batch: the cache and the [rows, columns] attention mask that goes with it."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask
        self.mergeable = cache_is_mergeable(cache)

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    def positions(self) -> torch.Tensor:
        """Position id of the next token of each row: how many real tokens the row already has."""
        return self.mask.sum(dim=1, keepdim=True)

    def extend(self) -> torch.Tensor:
        """Append a real-token column (for the step about to run); returns the new mask."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.size, 1))], dim=1)
        return self.mask

    def select(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (in that order) and drop columns that are padding in every kept row."""
        if len(keep) == self.size:
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        for layer in self.cache.layers:
            layer.batch_select_indices(index)
        self.mask = self.mask.index_select(0, index)
        if self.mergeable and keep:
            used = self.mask.any(dim=0).nonzero()
            first = int(used[0]) if used.numel() else 0
            if first > 0:
                for layer in self.cache.layers:
                    layer.keys = layer.keys[:, :, first:, :]
                    layer.values = layer.values[:, :, first:, :]
                self.mask = self.mask[:, first:]

    def merge(self, other: KVBatch) -> None:
        """Append ``other``'s rows below ours, left-padding whichever is shorter."""
        if not (self.mergeable and other.mergeable):
            raise ValueError("cache layers of this model cannot be merged")
        mine, theirs = self.mask.shape[1], other.mask.shape[1]
        width = max(mine, theirs)
        for a, b in zip(self.cache.layers, other.cache.layers, strict=True):
            a.keys = torch.cat(
                [_pad_left(a.keys, width - mine, 2), _pad_left(b.keys, width - theirs, 2)], dim=0
            )
            a.values = torch.cat(
                [_pad_left(a.values, width - mine, 2), _pad_left(b.values, width - theirs, 2)], dim=0
            )
        self.mask = torch.cat(
            [_pad_left(self.mask, width - mine, 1), _pad_left(other.mask, width - theirs, 1)], dim=0
        )
