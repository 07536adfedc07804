"""The conversion plan: which source tensors make each parameter of the converted model.

Input files are first only *listed* (names, shapes, dtypes). Replaying the official load order
on those lists gives each target parameter a `Recipe`: one source tensor, plus the LoRA deltas
the official loader merges into it. A later file that loads the same parameter replaces the
recipe, exactly as a later `load_state_dict` overwrites a weight; what it replaces is recorded
as dropped with that reason. Every source tensor ends up consumed or dropped with a reason,
and `validate` fails on unknown keys, parameters nothing provides, and shape mismatches.

`run` then streams the files one at a time and writes each finished parameter:

    W = cast(source + Σ scale · B @ A)          (the LoRA sum in float32)
"""

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .checkpoint_io import TensorFile, TensorMeta
from .official_layout import ConversionError, Drop

CONSUMED = "consumed"
MAX_LISTED = 25


@dataclass(frozen=True)
class TensorRef:
    file: TensorFile
    key: str

    @property
    def meta(self) -> TensorMeta:
        return self.file.metadata()[self.key]

    def __str__(self) -> str:
        return f"{self.file.label}:{self.key}"


@dataclass(frozen=True)
class LoraDelta:
    a: TensorRef  # (r, in)
    b: TensorRef  # (out, r)
    scale: float


@dataclass
class Recipe:
    source: TensorRef
    deltas: list[LoraDelta] = field(default_factory=list)


def _listing(title: str, lines: list[str]) -> str:
    shown = "\n".join(f"  - {line}" for line in lines[:MAX_LISTED])
    more = f"\n  ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    return f"{title} ({len(lines)}):\n{shown}{more}"


class ConversionPlan:
    def __init__(self):
        self.recipes: dict[str, Recipe] = {}
        self.files: list[TensorFile] = []
        self.status: dict[TensorRef, str] = {}
        self.unknown: list[TensorRef] = []
        self.errors: list[str] = []
        self._uses: Counter[TensorRef] = Counter()

    # ------------------------------------------------------------------ building

    def add_file(self, file: TensorFile) -> list[TensorRef]:
        """Registers a file; every one of its tensors must then be consumed or dropped."""
        if file not in self.files:
            self.files.append(file)
        return [TensorRef(file, key) for key in file.metadata()]

    def route(self, ref: TensorRef, mapped: str | Drop | None) -> None:
        """Applies a key-mapping result: load into a target, drop with a reason, or unknown."""
        if isinstance(mapped, Drop):
            self.drop(ref, mapped.reason)
        elif isinstance(mapped, str):
            self.assign(mapped, ref)
        else:
            self.unknown.append(ref)
            self.status[ref] = "unknown key"

    def assign(self, target: str, ref: TensorRef, *, keep_deltas: bool = False) -> None:
        """`target` now comes from `ref`, replacing (and dropping) what provided it before.

        With `keep_deltas`, LoRA deltas already merged into `target` stay (applied to the new
        source) instead of being dropped with the old source.
        """
        old = self.recipes.get(target)
        recipe = Recipe(ref)
        if old is not None:
            reason = f"overridden by {ref.file.label} (official load order)"
            self._release(old.source, reason)
            if keep_deltas:
                recipe.deltas = old.deltas
            else:
                for delta in old.deltas:
                    self._release(delta.a, f"LoRA of a weight then {reason}")
                    self._release(delta.b, f"LoRA of a weight then {reason}")
        self.recipes[target] = recipe
        self._use(ref)

    def add_lora(self, target: str, a: TensorRef, b: TensorRef, scale: float) -> None:
        """Merges `scale · B @ A` into `target` (which an earlier file must provide)."""
        recipe = self.recipes.get(target)
        if recipe is None:
            self.errors.append(f"LoRA {a} / {b} targets {target}, which no earlier file provides")
            self.status[a] = self.status[b] = "LoRA without a base weight"
            return
        recipe.deltas.append(LoraDelta(a, b, scale))
        self._use(a)
        self._use(b)

    def drop(self, ref: TensorRef, reason: str) -> None:
        if self._uses[ref] == 0:
            self.status[ref] = reason

    def _use(self, ref: TensorRef) -> None:
        self._uses[ref] += 1
        self.status[ref] = CONSUMED

    def _release(self, ref: TensorRef, reason: str) -> None:
        self._uses[ref] -= 1
        if self._uses[ref] == 0:
            self.status[ref] = reason

    # ------------------------------------------------------------------ checking

    def validate(self, expected: dict[str, TensorMeta]) -> None:
        """Raises `ConversionError` listing every problem: unknown (extra) source keys, targets the
        model lacks, parameters nothing provides (missing keys), shape mismatches, LoRA errors."""
        problems = []
        if self.unknown:
            problems.append(
                _listing("Source keys the converter does not know (extra keys)", [str(r) for r in self.unknown])
            )
        unexpected = [f"{r.source} -> {name}" for name, r in self.recipes.items() if name not in expected]
        if unexpected:
            problems.append(_listing("Source keys mapped to parameters the model does not have", unexpected))
        missing = [name for name in expected if name not in self.recipes]
        if missing:
            problems.append(_listing("Model parameters that no input file provides (missing keys)", missing))
        shapes = [
            line
            for name, recipe in self.recipes.items()
            if name in expected
            for line in self._shape_errors(name, recipe, expected[name])
        ]
        if shapes:
            problems.append(_listing("Shape mismatches", shapes))
        if self.errors:
            problems.append(_listing("LoRA errors", self.errors))
        unaccounted = [
            str(TensorRef(f, k)) for f in self.files for k in f.metadata() if TensorRef(f, k) not in self.status
        ]
        if unaccounted:
            problems.append(_listing("Source tensors neither consumed nor dropped", unaccounted))
        if problems:
            raise ConversionError("The checkpoints do not convert cleanly:\n" + "\n".join(problems))

    @staticmethod
    def _shape_errors(name: str, recipe: Recipe, target: TensorMeta) -> list[str]:
        errors = []
        if recipe.source.meta.shape != target.shape:
            errors.append(
                f"{recipe.source} has shape {list(recipe.source.meta.shape)}, {name} needs {list(target.shape)}"
            )
        for delta in recipe.deltas:
            a, b = delta.a.meta.shape, delta.b.meta.shape
            if len(a) != 2 or len(b) != 2 or b[1] != a[0] or (b[0], a[1]) != target.shape:
                errors.append(
                    f"LoRA {delta.b} {list(b)} @ {delta.a} {list(a)} does not give {name} {list(target.shape)}"
                )
        return errors

    # ------------------------------------------------------------------ running

    def execution_order(self) -> list[tuple[TensorFile, list[str]]]:
        """Targets grouped by the file of their source tensor, files in registration order."""
        by_file: dict[TensorFile, list[str]] = {file: [] for file in self.files}
        for name, recipe in self.recipes.items():
            by_file[recipe.source.file].append(name)
        return [(file, names) for file, names in by_file.items() if names]

    def run(
        self,
        target_dtypes: dict[str, torch.dtype],
        write: Callable[[str, torch.Tensor], None],
        *,
        progress: bool = True,
    ) -> None:
        """Computes every target, streaming source files one at a time, and hands it to `write`.

        Files that hold LoRA deltas (small side files) stay open throughout; every other file
        is opened for its own targets only and released before the next one.
        """
        delta_files = {ref.file for recipe in self.recipes.values() for d in recipe.deltas for ref in (d.a, d.b)}
        total = sum(_nbytes(self.recipes[name].source.meta.shape, target_dtypes[name]) for name in self.recipes)
        with contextlib.ExitStack() as stack, tqdm(total=total, unit="B", unit_scale=True, disable=not progress) as bar:
            open_deltas = {file: stack.enter_context(file.open()) for file in self.files if file in delta_files}
            for file, names in self.execution_order():
                with contextlib.ExitStack() as file_stack:
                    tensors = open_deltas[file] if file in open_deltas else file_stack.enter_context(file.open())
                    bar.set_postfix_str(file.label, refresh=False)
                    for name in names:
                        tensor = self._compute(self.recipes[name], tensors, open_deltas, target_dtypes[name])
                        write(name, tensor)
                        bar.update(tensor.numel() * tensor.element_size())

    @staticmethod
    def _compute(recipe: Recipe, tensors, open_deltas, dtype: torch.dtype) -> torch.Tensor:
        source = tensors[recipe.source.key]
        if not recipe.deltas:
            return source.to(dtype=dtype, copy=True)
        weight = source.to(torch.float32, copy=True)
        for delta in recipe.deltas:
            a = open_deltas[delta.a.file][delta.a.key].float()
            b = open_deltas[delta.b.file][delta.b.key].float()
            weight.addmm_(b, a, alpha=delta.scale)
        return weight.to(dtype)

    # ------------------------------------------------------------------ reporting

    def dropped(self) -> dict[str, list[str]]:
        """Drop reason -> the dropped source tensors."""
        result: dict[str, list[str]] = {}
        for ref, status in self.status.items():
            if status != CONSUMED:
                result.setdefault(status, []).append(str(ref))
        return result

    def num_consumed(self) -> int:
        return sum(status == CONSUMED for status in self.status.values())


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return TensorMeta(shape, dtype).nbytes
