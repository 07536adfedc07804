"""Batches for training: samples → chat → processor (media decoded here, lazily) → padded tensors.

    sample ─► to_messages ─► UniMoeProcessor.apply_chat_template(tokenize=True,
                                 return_assistant_tokens_mask=True)
           ─► labels = input_ids on assistant tokens, -100 elsewhere (prompt, media, padding)

Each sample is processed on its own, so one bad sample costs only itself: a sample whose media
cannot be read (`MediaError`) or that is longer than `model_max_length` after its media are
expanded is skipped, with its index in a warning, and counted in the batch's `skipped` entry
(`SKIP_REASONS` order) for the trainer's summary. Nothing is ever truncated, so no placeholder
run is ever cut.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from modeling_unimoe.media_unimoe import MediaError, load_image

from .data import SampleError, to_messages

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
SKIP_REASONS = ("overlong", "bad_media", "invalid")
TEXT_KEYS = ("input_ids", "labels")


def load_frame_lists(messages: list[dict]) -> list[dict]:
    """Official videos are lists of frame files: read them into images (a video file stays a path)."""
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            continue
        for block in content:
            if block["type"] == "video" and isinstance(block["video"], (list, tuple)):
                block["video"] = [load_image(frame) for frame in block["video"]]
    return messages


@dataclass
class UniMoeDataCollator:
    """Collates samples of `data.build_dataset` for `UniMoeForConditionalGeneration`.

    Args:
        processor: a `UniMoeProcessor`.
        model_max_length: longest sequence (media expanded) a sample may have; longer ones are skipped.
        voice_modality: `"speech"` (Whisper) or `"audio"` (BEATs) for the `voice` files.
        media_dir: folder of relative media paths, for samples not from `build_dataset` (which
            makes them absolute).

    Returns from `__call__`: `input_ids`, `attention_mask`, `labels` (right-padded), the media
    inputs of the kept samples concatenated in sample order, and `skipped` (counts per
    `SKIP_REASONS`). If every sample is skipped, one two-token row without targets stands in.
    """

    processor: Any
    model_max_length: int
    voice_modality: str = "speech"
    media_dir: str | Path | None = None

    def encode(self, sample: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One sample's `input_ids`, `labels` (1D) and media tensors.

        Raises:
            MediaError: a media file cannot be read.
            SampleError: the sample is malformed.
        """
        messages = load_frame_lists(to_messages(sample, self.voice_modality, self.media_dir))
        out = self.processor.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
        )
        input_ids = out.pop("input_ids")[0]
        assistant = out.pop("assistant_masks")[0]
        out.pop("attention_mask")
        return {"input_ids": input_ids, "labels": input_ids.masked_fill(assistant == 0, IGNORE_INDEX), **out}

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        encoded, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
        for position, sample in enumerate(features):
            index = sample.get("sample_index", position)
            try:
                item = self.encode(sample)
            except MediaError as err:
                self._skip(skipped, "bad_media", index, str(err))
                continue
            except SampleError as err:
                self._skip(skipped, "invalid", index, str(err))
                continue
            length = item["input_ids"].shape[0]
            if length > self.model_max_length:
                self._skip(skipped, "overlong", index, f"{length} tokens > model_max_length={self.model_max_length}")
                continue
            encoded.append(item)
        batch = self._pad(encoded) if encoded else self._placeholder_batch()
        batch["skipped"] = torch.tensor([skipped[reason] for reason in SKIP_REASONS])
        return batch

    @staticmethod
    def _skip(skipped: dict[str, int], reason: str, index: Any, detail: str) -> None:
        skipped[reason] += 1
        logger.warning(f"Skipping sample {index} ({reason}): {detail}")

    def _pad_id(self) -> int:
        tokenizer = self.processor.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.unk_token_id or 0)

    def _pad(self, encoded: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(item["input_ids"].shape[0] for item in encoded)
        input_ids = torch.full((len(encoded), width), self._pad_id(), dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, item in enumerate(encoded):
            length = item["input_ids"].shape[0]
            input_ids[row, :length] = item["input_ids"]
            labels[row, :length] = item["labels"]
            attention_mask[row, :length] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        # Media rows in sample order fill the placeholders in (batch, position) order.
        media_keys = dict.fromkeys(key for item in encoded for key in item if key not in TEXT_KEYS)
        for key in media_keys:
            batch[key] = torch.cat([item[key] for item in encoded if key in item])
        return batch

    def _placeholder_batch(self) -> dict[str, torch.Tensor]:
        tokenizer = self.processor.tokenizer
        ids = [tokenizer.bos_token_id or 0, tokenizer.eos_token_id or 0]
        return {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, 2, dtype=torch.long),
            "labels": torch.full((1, 2), IGNORE_INDEX, dtype=torch.long),
        }


__all__ = ["IGNORE_INDEX", "SKIP_REASONS", "UniMoeDataCollator", "load_frame_lists"]
