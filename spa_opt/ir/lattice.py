"""Channel-space types shared by the coupling analysis and the passes that read it.

A group of coupled channels is removed one *unit* at a time (a channel, an attention
head, a key-value group, a convolution group). Where a group's units sit on one axis
of one member tensor is an :class:`IndexMap`: a ``(units, block)`` array whose row
``u`` lists the axis positions of unit ``u``. Typical shapes of maps:

- identity (a Conv's output channels, a BatchNorm scale): ``block == 1``, in order;
- offset and slice (a branch inside a Concat, one part of a Split):
  :meth:`IndexMap.shifted`, :meth:`IndexMap.sliced`;
- block structure (heads after a Reshape, a GQA key-value group, a depthwise group):
  ``block > 1``;
- permutations (channel shuffle, DepthToSpace): :meth:`IndexMap.permuted`.

Removal slices a member with :meth:`IndexMap.take`. :class:`PinReason` says, in words
a user can act on, why units cannot be removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class IndexMap:
    """Positions of a group's units on one axis of size ``extent``."""

    positions: np.ndarray
    extent: int

    def __post_init__(self) -> None:
        positions = np.array(self.positions, dtype=np.int64, copy=True)
        if positions.ndim != 2:
            raise ValueError(f"positions must be (units, block), got shape {positions.shape}")
        if positions.size and (positions.min() < 0 or positions.max() >= self.extent):
            raise ValueError(f"positions fall outside an axis of size {self.extent}")
        positions.setflags(write=False)
        object.__setattr__(self, "positions", positions)

    @classmethod
    def identity(cls, size: int, block: int = 1) -> IndexMap:
        """Every position in order, grouped in consecutive blocks of ``block``."""
        if size % block:
            raise ValueError(f"an axis of {size} cannot hold blocks of {block}")
        return cls(np.arange(size).reshape(-1, block), size)

    @property
    def units(self) -> int:
        """How many removable units the map holds."""
        return self.positions.shape[0]

    @property
    def block(self) -> int:
        """Axis positions per unit."""
        return self.positions.shape[1]

    def is_identity(self) -> bool:
        """Whether the map covers the whole axis, in order."""
        flat = self.positions.reshape(-1)
        return flat.size == self.extent and bool(np.array_equal(flat, np.arange(self.extent)))

    def flat(self) -> np.ndarray:
        """All positions the map occupies, unit after unit."""
        return self.positions.reshape(-1)

    def take(self, units: Iterable[int]) -> np.ndarray:
        """Axis positions of the given units, in order (what removal slices)."""
        return self.positions[np.asarray(list(units), dtype=np.int64)].reshape(-1)

    def shifted(self, offset: int, extent: int) -> IndexMap:
        """The map placed at ``offset`` inside a larger axis (Concat)."""
        return IndexMap(self.positions + offset, extent)

    def sliced(self, start: int, stop: int) -> IndexMap | None:
        """The map seen through ``axis[start:stop]`` (Split, Slice), None if disjoint.

        Units that straddle the slice boundary keep only their inside positions, so
        a slice that cuts through a block returns None: such a unit cannot be kept
        whole and the caller must pin.
        """
        inside = (self.positions >= start) & (self.positions < stop)
        whole = inside.all(axis=1)
        if not inside.any():
            return None
        if not np.array_equal(whole, inside.any(axis=1)):
            return None
        return IndexMap(self.positions[whole] - start, stop - start)

    def permuted(self, new_position_of: np.ndarray) -> IndexMap:
        """The map after the axis is permuted: old index ``i`` moves to ``new_position_of[i]``."""
        return IndexMap(np.asarray(new_position_of)[self.positions], self.extent)

    def regrouped(self, block: int) -> IndexMap:
        """Units merged in consecutive runs so that each spans ``block`` positions."""
        flat = self.flat()
        if flat.size % block:
            raise ValueError(f"{flat.size} positions cannot form blocks of {block}")
        return IndexMap(flat.reshape(-1, block), self.extent)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, IndexMap)
            and self.extent == other.extent
            and np.array_equal(self.positions, other.positions)
        )

    def __hash__(self) -> int:
        return hash((self.extent, self.positions.shape, self.positions.tobytes()))

    def __repr__(self) -> str:
        if self.is_identity():
            return f"IndexMap.identity({self.extent}, block={self.block})"
        return f"IndexMap(units={self.units}, block={self.block}, extent={self.extent})"


@dataclasses.dataclass(frozen=True)
class PinReason:
    """Why a set of channels cannot be pruned, in words a user can act on."""

    code: str
    detail: str
    node: str | None = None

    def __str__(self) -> str:
        return f"{self.detail} at node `{self.node}`" if self.node else self.detail
