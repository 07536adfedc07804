"""Safe, lazy reading of checkpoint files: torch pickles (`.bin`, `.pt`) and safetensors.

Pickles are read with `torch.load(weights_only=True)`, which refuses anything but tensors and
plain containers, so no code in a checkpoint ever runs; zip-format pickles (every torch >= 1.6
file) are memory-mapped, so listing a file's keys and shapes reads no tensor data and a tensor's
pages are only read when it is used.

    source = TensorFile(path, label="Uni-MoE-speech-e2/adapter_model.bin")
    source.metadata()["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape
    with source.open() as tensors:
        tensor = tensors[key]
"""

import contextlib
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointFormatError(ValueError):
    """An input file is not the kind of checkpoint the converter expects."""


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        numel = 1
        for size in self.shape:
            numel *= size
        return numel * self.dtype.itemsize


def load_pickle(path: str | os.PathLike, *, mmap: bool = True) -> object:
    """`torch.load` with `weights_only=True`; memory-mapped unless the file predates the zip format.

    Raises:
        CheckpointFormatError: the pickle holds more than tensors and plain containers.
    """
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as error:
            if mmap and "mmap can only be used" in str(error):
                return torch.load(path, map_location="cpu", weights_only=True)
            raise
    except pickle.UnpicklingError as error:
        raise CheckpointFormatError(f"{path} cannot be read safely as a weights-only torch pickle: {error}") from error


class TensorFile:
    """One input file of tensors, read lazily.

    Args:
        path: a torch pickle of a flat `{name: tensor}` dict, or a `.safetensors` file.
        label: how the converter names this file in messages and reports.
        entry: for pickles that nest the state dict (BEATs' `{"cfg", "model"}`), the key of the
            tensor dict.
    """

    def __init__(self, path: str | os.PathLike, *, label: str | None = None, entry: str | None = None):
        self.path = Path(path)
        self.label = label or self.path.name
        self.entry = entry
        self._metadata: dict[str, TensorMeta] | None = None

    def __repr__(self) -> str:
        return f"TensorFile({self.label!r})"

    @property
    def file_size(self) -> int:
        return self.path.stat().st_size

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix == ".safetensors"

    def metadata(self) -> dict[str, TensorMeta]:
        """Name → shape and dtype of every tensor, in file order (cached)."""
        if self._metadata is None:
            with self.open() as tensors:
                if self.is_safetensors:
                    self._metadata = tensors.metadata()
                else:
                    self._metadata = {name: TensorMeta(tuple(t.shape), t.dtype) for name, t in tensors.items()}
        return self._metadata

    @contextlib.contextmanager
    def open(self) -> Iterator[Mapping[str, torch.Tensor]]:
        """The file's tensors; the mapping (and its memory map) is released on exit."""
        if self.is_safetensors:
            with safe_open(self.path, framework="pt") as handle:
                yield _SafetensorsView(handle)
            return
        tensors = self._load_tensor_dict()
        try:
            yield tensors
        finally:
            tensors.clear()

    def _load_tensor_dict(self) -> dict[str, torch.Tensor]:
        content = load_pickle(self.path)
        if self.entry is not None:
            if not isinstance(content, dict) or self.entry not in content:
                raise CheckpointFormatError(f"{self.label}: expected a dict with a {self.entry!r} entry.")
            content = content[self.entry]
        if not isinstance(content, dict):
            raise CheckpointFormatError(f"{self.label}: expected a dict of tensors, got {type(content).__name__}.")
        not_tensors = [name for name, value in content.items() if not isinstance(value, torch.Tensor)]
        if not_tensors:
            raise CheckpointFormatError(f"{self.label}: entries that are not tensors: {not_tensors[:10]}.")
        return dict(content)


class _SafetensorsView(Mapping):
    def __init__(self, handle):
        self._handle = handle
        self._keys = list(handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def metadata(self) -> dict[str, TensorMeta]:
        result = {}
        for key in self._keys:
            view = self._handle.get_slice(key)
            result[key] = TensorMeta(tuple(view.get_shape()), _SAFETENSORS_DTYPES[view.get_dtype()])
        return result
