"""Generation settings and the generate-function interface the runner calls.

The runner only needs a `Generator`: any callable `(samples, settings) -> list[str]` returning
one answer per sample. `HFGenerator` is the one for a saved Uni-MoE folder (processor + model,
both loaded with `trust_remote_code`); tests and other back-ends can pass their own function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .data import EvalSample


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, as the official `eval.py` passes them to `generate`."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    num_beams: int = 1
    length_penalty: float | None = None
    min_new_tokens: int | None = None
    seed: int = 0  # sampling presets are made repeatable: torch is reseeded before each batch

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError(f"max_new_tokens and num_beams must be >= 1, got {self.max_new_tokens}, {self.num_beams}")
        if self.do_sample and (self.temperature is None or self.temperature <= 0):
            raise ValueError(
                f"sampling needs a temperature > 0, got {self.temperature}; use do_sample=False for greedy"
            )

    def replace(self, **overrides: Any) -> GenerationSettings:
        """A copy with the non-None overrides applied (`do_sample=False` drops the temperature)."""
        changes = {key: value for key, value in overrides.items() if value is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown generation settings {sorted(unknown)}")
        if changes.get("do_sample") is False:
            changes.setdefault("temperature", None)
            changes["top_p"] = changes.get("top_p")
        return dataclasses.replace(self, **changes)

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
        }
        if self.do_sample:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        for key in ("length_penalty", "min_new_tokens"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        return kwargs

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """A short human-readable summary, e.g. "greedy, max 512 new tokens"."""
        parts = [f"sample T {self.temperature}" if self.do_sample else "greedy"]
        if self.num_beams > 1:
            parts.append(f"{self.num_beams} beams")
        if self.min_new_tokens:
            parts.append(f"min {self.min_new_tokens}")
        parts.append(f"max {self.max_new_tokens} new tokens")
        return ", ".join(parts)


GREEDY = GenerationSettings(max_new_tokens=512)
SAMPLE_T02 = GenerationSettings(max_new_tokens=1024, do_sample=True, temperature=0.2)


class Generator(Protocol):
    """Answers a batch of samples: one string per sample, in order."""

    def __call__(self, samples: Sequence[EvalSample], settings: GenerationSettings) -> list[str]: ...


@dataclass
class HFGenerator:
    """Generates with a saved Uni-MoE checkpoint folder: `AutoProcessor` + `AutoModel`, both
    `trust_remote_code=True` (loaded on first use), the processor's chat template around each
    sample's prompt, left padding, and only the new tokens decoded."""

    model_path: str
    device: str | None = None  # "cuda", "cpu", ...; "auto" spreads a large model with device_map="auto"
    dtype: str = "auto"
    model: Any = field(default=None, repr=False)
    processor: Any = field(default=None, repr=False)

    def load(self) -> HFGenerator:
        """Loads processor and model (done on first use, so a finished run never loads them)."""
        import torch
        from transformers import AutoModel, AutoProcessor

        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.processor is None:
            self.processor = AutoProcessor.from_pretrained(self.model_path, trust_remote_code=True)
        if self.model is None:
            spread = {"device_map": "auto"} if self.device == "auto" else {}
            self.model = AutoModel.from_pretrained(self.model_path, trust_remote_code=True, dtype=self.dtype, **spread)
            if not spread:
                self.model.to(self.device)
        self.model.eval()
        return self

    def prompts(self, samples: Sequence[EvalSample]) -> list[str]:
        """The full model prompts: system prompt, `USER: {prompt} ASSISTANT:`."""
        self.load()
        return [
            self.processor.apply_chat_template([{"role": "user", "content": s.prompt}], add_generation_prompt=True)
            for s in samples
        ]

    def inputs(self, samples: Sequence[EvalSample]) -> Any:
        """The batch's model inputs: prompts left-padded, media one list per sample."""
        self.load()
        media = {}
        for modality in ("images", "videos", "speech", "audios"):
            per_sample = [[_materialise(modality, item) for item in s.media.get(modality, [])] for s in samples]
            if any(per_sample):
                media[modality] = per_sample
        return self.processor(text=self.prompts(samples), padding_side="left", **media).to(self.model.device)

    def __call__(self, samples: Sequence[EvalSample], settings: GenerationSettings) -> list[str]:
        import torch

        inputs = self.inputs(samples)
        torch.manual_seed(settings.seed)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **settings.generate_kwargs())
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


def _materialise(modality: str, item: Any) -> Any:
    # The official JSON gives a video as its frame files: the processor takes a list of frames.
    if modality == "videos" and isinstance(item, list) and item and isinstance(item[0], str):
        from PIL import Image

        return [Image.open(path).convert("RGB") for path in item]
    return item
