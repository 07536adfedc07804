"""Answering the held-out questions through `pipeline("any-to-text")`, and where the tokens go.

Exact match: the generated answer, stripped, equals the reference. Routing: forward hooks on the
routers count, for every media token of an item (the placeholders its image, video, speech or
audio features fill), which experts its top-k choice picks, per layer.
"""

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unimoe_trl.data import to_messages

from .synthetic_task import MODALITIES


@dataclass
class Evaluation:
    """Answers of one model on a set of records."""

    answers: list[dict] = field(default_factory=list)  # id, modality, question_type, reference, answer, correct
    # modality -> (layers, experts) counts of top-k choices on media tokens; MoE models only
    routing: dict[str, np.ndarray] = field(default_factory=dict)

    def accuracy(self) -> dict[str, float]:
        """Exact match per modality."""
        scores: dict[str, list[bool]] = {}
        for answer in self.answers:
            scores.setdefault(answer["modality"], []).append(answer["correct"])
        return {modality: float(np.mean(values)) for modality, values in scores.items()}

    def routing_shares(self) -> dict[str, np.ndarray]:
        """modality -> (layers, experts): share of each expert among the top-k choices."""
        return {m: counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1) for m, counts in self.routing.items()}


def question_chat(record: dict, media_dir: str | Path) -> list[dict]:
    """The record's first user turn as a chat for the pipeline (media as content blocks)."""
    return to_messages(record, voice_modality="placeholder", media_dir=media_dir)[:1]


def reference(record: dict) -> str:
    return record["conversations"][1]["value"]


class RoutingRecorder:
    """Counts, per layer, the experts chosen for the media tokens of every forward pass.

    Works on the model `pipeline(..., trust_remote_code=True)` loads (classes from the
    checkpoint's own code), so routers are found by class name.
    """

    def __init__(self, model: torch.nn.Module):
        config = model.config
        self.placeholder_ids = torch.tensor(
            [config.image_token_id, config.video_token_id, config.speech_token_id, config.audio_token_id]
        )
        text_config = config.get_text_config()
        self.num_experts = text_config.num_experts
        self.layers = text_config.moe_layer_indices
        self.counts = np.zeros((len(self.layers), self.num_experts))
        self._media_mask: torch.Tensor | None = None
        decoder = getattr(model, "model", model)  # UniMoeModel: its input_ids mark the media tokens
        self._handles = [decoder.register_forward_pre_hook(self._read_ids, with_kwargs=True)]
        for name, module in model.named_modules():
            if type(module).__name__ == "UniMoeRouter":
                layer = int(name.split("layers.")[1].split(".")[0])
                self._handles.append(module.register_forward_hook(self._count(self.layers.index(layer))))

    def _read_ids(self, module, args, kwargs) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._media_mask = None if input_ids is None else torch.isin(input_ids.reshape(-1).cpu(), self.placeholder_ids)

    def _count(self, row: int) -> Callable:
        def hook(module, args, output) -> None:
            top_k_index = output[2].cpu()  # (tokens, k)
            if self._media_mask is None or self._media_mask.shape[0] != top_k_index.shape[0]:
                return
            chosen = top_k_index[self._media_mask].reshape(-1)
            self.counts[row] += np.bincount(chosen.numpy(), minlength=self.num_experts)

        return hook

    def take(self) -> np.ndarray:
        """The counts since the last call."""
        counts, self.counts = self.counts, np.zeros_like(self.counts)
        return counts

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def answer_questions(
    pipe,
    records: Sequence[dict],
    media_dir: str | Path,
    *,
    record_routing: bool = False,
    max_new_tokens: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Asks `pipe` (an any-to-text pipeline) every record's first question, greedily."""
    evaluation = Evaluation()
    recorder = RoutingRecorder(pipe.model) if record_routing else None
    try:
        for index, record in enumerate(records):
            output = pipe(
                question_chat(record, media_dir),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_full_text=False,
            )
            answer = output[0]["generated_text"].strip()
            expected = reference(record)
            evaluation.answers.append(
                {
                    "id": record.get("id"),
                    "modality": record["modality"],
                    "question_type": record["question_type"],
                    "reference": expected,
                    "answer": answer,
                    "correct": answer == expected,
                }
            )
            if recorder is not None:
                counts = recorder.take()
                total = evaluation.routing.setdefault(record["modality"], np.zeros_like(counts))
                total += counts
            if progress is not None:
                progress(index)
    finally:
        if recorder is not None:
            recorder.remove()
    return evaluation


def majority_baseline(train_records: Sequence[dict], test_records: Sequence[dict]) -> dict[str, float]:
    """Exact match per modality of always answering a question type's most common training
    answer (a "chance" that knows the answer distribution)."""
    by_type: dict[str, Counter] = {}
    for record in train_records:
        turns = record["conversations"]
        types = record["question_type"].split("+")
        for qtype, answer in zip(types, turns[1::2]):
            by_type.setdefault(qtype, Counter())[answer["value"]] += 1
    scores: dict[str, list[bool]] = {}
    for record in test_records:
        counter = by_type.get(record["question_type"])
        guess = counter.most_common(1)[0][0] if counter else ""
        scores.setdefault(record["modality"], []).append(guess == reference(record))
    return {m: float(np.mean(scores[m])) for m in MODALITIES if m in scores}


__all__ = ["Evaluation", "RoutingRecorder", "answer_questions", "majority_baseline", "question_chat"]
