"""Writes a Hub-format safetensors checkpoint one shard at a time.

The shard layout is fixed up front from the tensor sizes in the order the tensors will arrive,
so the final `model-0000i-of-0000N.safetensors` names are known, and a shard is written (and its
tensors freed) as soon as its last tensor arrives: at most one shard is ever held in memory.
The file names and `model.safetensors.index.json` are those `PreTrainedModel.save_pretrained`
writes, so `from_pretrained` reads the folder as usual.
"""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def parse_size(size: int | str) -> int:
    """`5GB`, `500MB`, `2GiB` or a number of bytes → bytes (decimal units, as transformers)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*", size.upper())
    if match is None:
        raise ValueError(f"Cannot read the size {size!r}; use e.g. '5GB', '500MB' or a number of bytes.")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGT".index(unit or " "))


def plan_shards(sizes: list[tuple[str, int]], max_shard_size: int) -> list[list[str]]:
    """Greedy packing of `(name, nbytes)` in arrival order into shards of at most `max_shard_size`
    bytes (a single larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    current = 0
    for name, nbytes in sizes:
        if shards[-1] and current + nbytes > max_shard_size:
            shards.append([])
            current = 0
        shards[-1].append(name)
        current += nbytes
    return shards


def shard_file_names(num_shards: int) -> list[str]:
    if num_shards == 1:
        return [SAFE_WEIGHTS_NAME]
    return [f"model-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(1, num_shards + 1)]


class ShardWriter:
    """Collects tensors by name and writes each planned shard once it is complete."""

    def __init__(self, directory: str | Path, shards: list[list[str]]):
        self.directory = Path(directory)
        self.file_names = shard_file_names(len(shards))
        self._shard_of = {name: i for i, names in enumerate(shards) for name in names}
        if len(self._shard_of) != sum(len(names) for names in shards):
            raise ValueError("A tensor name appears in more than one shard.")
        self._missing = [set(names) for names in shards]
        self._pending: list[dict[str, torch.Tensor]] = [{} for _ in shards]
        self.total_size = 0
        self.max_written_shard = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        shard = self._shard_of.get(name)
        if shard is None or name not in self._missing[shard]:
            raise KeyError(f"{name} is not an expected tensor of this checkpoint (or was already written).")
        self._pending[shard][name] = tensor.contiguous()
        self._missing[shard].discard(name)
        if not self._missing[shard]:
            self._write(shard)

    def _write(self, shard: int) -> None:
        tensors = self._pending[shard]
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, self.directory / self.file_names[shard], metadata={"format": "pt"})
        self.total_size += size
        self.max_written_shard = max(self.max_written_shard, size)
        self._pending[shard] = {}

    def finish(self) -> None:
        """Checks every tensor arrived and writes the index (for more than one shard)."""
        missing = sorted(name for names in self._missing for name in names)
        if missing:
            raise RuntimeError(f"{len(missing)} tensors were never written: {missing[:20]}")
        if len(self.file_names) == 1:
            return
        index = {
            "metadata": {"total_size": self.total_size},
            "weight_map": {name: self.file_names[shard] for name, shard in sorted(self._shard_of.items())},
        }
        (self.directory / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
