"""Modality-grouped, length-grouped sampling (`group_by_modality_length`).

The indices come out in groups of `group_size` = per-device batch × processes, each group
drawn from one modality combination (`"image"`, `"image+speech"`, `"text"`, ...) and sorted by
length. Accelerate hands consecutive per-device batches to consecutive processes, so all the
processes of one step see the same modalities: under FSDP or ZeRO-3 every process then runs
the same encoders (whose sharded weights must be gathered by all of them), and no batch pads
a short text sample to a long video one. A modality's last, incomplete group is filled up
with earlier samples of the same modality, so an epoch may repeat up to `group_size - 1`
samples per modality.
"""

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ModalityLengthGroupedSampler(Sampler[int]):
    """Dataset indices in single-modality groups of `group_size`, shuffled per epoch (seed + epoch)."""

    def __init__(self, modalities: Sequence[str], lengths: Sequence[int], group_size: int, seed: int = 0):
        if len(modalities) != len(lengths):
            raise ValueError(f"{len(modalities)} modalities but {len(lengths)} lengths.")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}.")
        self.modalities = list(modalities)
        self.lengths = list(lengths)
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0
        self._by_modality: dict[str, list[int]] = {}
        for index, modality in enumerate(self.modalities):
            self._by_modality.setdefault(modality, []).append(index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(-(-len(indices) // self.group_size) * self.group_size for indices in self._by_modality.values())

    def groups(self) -> list[list[int]]:
        """This epoch's groups, in order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups = []
        for modality in sorted(self._by_modality):
            indices = self._by_modality[modality]
            shuffled = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            missing = -len(shuffled) % self.group_size
            shuffled += (shuffled * (missing // len(shuffled) + 1))[:missing]
            for start in range(0, len(shuffled), self.group_size):
                group = shuffled[start : start + self.group_size]
                groups.append(sorted(group, key=lambda i: -self.lengths[i]))
        order = torch.randperm(len(groups), generator=generator).tolist()
        return [groups[i] for i in order]

    def __iter__(self) -> Iterator[int]:
        return iter([index for group in self.groups() for index in group])


__all__ = ["ModalityLengthGroupedSampler"]
