"""Pre-training from scratch, before the three Uni-MoE stages.

The released Uni-MoE starts from pre-trained parts: a Vicuna language model and the CLIP,
Whisper and BEATs encoders. The demo has none of them, so it pre-trains its tiny parts on the
synthetic task's training split first (its own short loops, not Uni-MoE stages):

- **language model, on text**: every training record with each media item replaced by its slot
  words, one word per media token (`pretrain_text.json`: "redcirclenw emptyne emptysw
  redcirclese \\nWhat colour is the shape?" → "red"). The LM learns the task's language and to answer from
  what stands where the media tokens will be; stage 1 then teaches the connectors to put there
  what the slot words would.
- **encoders, on labels**: CLIP on the shape code of each quadrant patch (images and video
  frames), Whisper on the word
  under each 20-ms encoder position, BEATs on the sound kind, note and loudness under each
  160-ms patch column, each through a linear head that is thrown away afterwards.

The connectors (projector, aligners) stay untouched: aligning the encoders to the LM is stage 1.
"""

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modeling_unimoe import UniMoeForConditionalGeneration, UniMoeProcessor
from modeling_unimoe.media_unimoe import load_audio, load_image, load_video
from modeling_unimoe.vision_unimoe import select_image_features
from unimoe_trl.collator import IGNORE_INDEX
from unimoe_trl.data import to_messages

from .synthetic_task import (
    AUDIO_SLOTS,
    COLOURS,
    COUNTS,
    LOUDNESS,
    NO_NOTE,
    NOTES,
    SHAPES,
    SILENCE,
    SOUND_KINDS,
    SPEECH_SLOTS,
    WORDS,
    slot_components,
    transcribe,
)

LM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
# Positions whose window is within this many seconds of a word/burst edge get no label.
EDGE_SECONDS = 0.03


def _cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: float = 0.1):
    warmup_steps = max(1, int(steps * warmup))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train(
    parameters: Sequence[nn.Parameter],
    loss_fn: Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    scheduler = _cosine_schedule(optimizer, steps)
    losses = []
    for step in range(steps):
        loss = loss_fn(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, losses[-1])
    return losses


# --------------------------------------------------------------------------- language model


def encode_text_records(processor: UniMoeProcessor, records: Sequence[dict]) -> list[dict[str, torch.Tensor]]:
    """Token ids and answer-only labels of text records (official format, no media)."""
    encoded = []
    for record in records:
        out = processor.apply_chat_template(
            to_messages(record), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = out["input_ids"][0]
        encoded.append({"input_ids": ids, "labels": ids.masked_fill(out["assistant_masks"][0] == 0, IGNORE_INDEX)})
    return encoded


class SlotEmbedding(nn.Module):
    """Embeds token ids with the model's table, except slot words (`slot_components`), which
    become the sum of their parts' embeddings divided by sqrt(parts)."""

    def __init__(self, embed_tokens: nn.Embedding, tokenizer, components: dict[str, list[str]]):
        super().__init__()
        self.embed_tokens = embed_tokens
        vocab = embed_tokens.num_embeddings
        width = max(len(parts) for parts in components.values())
        parts = torch.arange(vocab)[:, None].repeat(1, width)
        weights = torch.zeros(vocab, width)
        weights[:, 0] = 1.0
        for word, words in components.items():
            ids = [single_token(tokenizer, w) for w in [word, *words]]
            parts[ids[0], : len(words)] = torch.tensor(ids[1:])
            weights[ids[0]] = 0.0
            weights[ids[0], : len(words)] = len(words) ** -0.5
        self.register_buffer("parts", parts, persistent=False)
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (self.embed_tokens(self.parts[input_ids]) * self.weights[input_ids][..., None]).sum(dim=-2)


def single_token(tokenizer, word: str) -> int:
    pieces = tokenizer.tokenize(" " + word)
    if len(pieces) != 1:
        raise ValueError(f"{word!r} is not one token ({pieces}); retrain the tokenizer with a larger vocabulary.")
    return tokenizer.convert_tokens_to_ids(pieces[0])


def _pad_batch(items: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), length), pad_id)
    labels = torch.full((len(items), length), IGNORE_INDEX)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        input_ids[row, :n], labels[row, :n], mask[row, :n] = item["input_ids"], item["labels"], 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def answer_loss(
    model: UniMoeForConditionalGeneration,
    embed: nn.Module,
    records: Sequence[dict[str, torch.Tensor]],
    pad_id: int,
    length_group: int,
) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of `records` (`encode_text_records`), run as
    groups of `length_group` records of similar length, each padded to its own longest."""
    records = sorted(records, key=lambda record: len(record["input_ids"]))
    answer_states, answer_ids = [], []
    for start in range(0, len(records), length_group):
        batch = _pad_batch(records[start : start + length_group], pad_id)
        hidden = model.model(inputs_embeds=embed(batch["input_ids"]), attention_mask=batch["attention_mask"])[0]
        # Logits only where an answer token is predicted: most positions are prompt.
        targets = batch["labels"][:, 1:]
        predicted = targets != IGNORE_INDEX
        answer_states.append(hidden[:, :-1][predicted])
        answer_ids.append(targets[predicted])
    logits = model.lm_head(torch.cat(answer_states))
    return F.cross_entropy(logits.float(), torch.cat(answer_ids))


def pretrain_language_model(
    model: UniMoeForConditionalGeneration,
    processor: UniMoeProcessor,
    records: Sequence[dict],
    *,
    steps: int,
    batch_size: int = 32,
    length_group: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Trains the LM (embeddings, decoder, head) on text records whose slot words are embedded as
    the sum of their parts (`SlotEmbedding`); the encoders are not touched. Returns the loss of
    every step.

    Each batch runs as groups of `length_group` records of similar length, padded per group:
    the loss and gradient of the whole padded batch (records do not see each other) with about
    two thirds of its tokens (records are 20 to 69 tokens long; a batch pads to about 67)."""
    data = encode_text_records(processor, records)
    rng = random.Random(seed)
    parameters = [p for name, p in model.named_parameters() if name.startswith(LM_PREFIXES)]
    pad_id = processor.tokenizer.pad_token_id
    embed = SlotEmbedding(model.get_input_embeddings(), processor.tokenizer, slot_components())
    model.train()

    def loss_fn(step: int) -> torch.Tensor:
        records = rng.sample(data, min(batch_size, len(data)))
        return answer_loss(model, embed, records, pad_id, length_group)

    return _train(parameters, loss_fn, steps, lr, progress)


# -------------------------------------------------------------------------------- encoders


def _frame_labels(
    num_positions: int, seconds_per_position: float, events: Sequence[tuple[float, float, int]]
) -> torch.Tensor:
    """Per position: the class of the event covering it (onset, duration, class), 0 where no
    event is, IGNORE_INDEX near event edges."""
    labels = torch.zeros(num_positions, dtype=torch.long)
    for position in range(num_positions):
        start, end = position * seconds_per_position, (position + 1) * seconds_per_position
        for onset, duration, label in events:
            if start >= onset + EDGE_SECONDS and end <= onset + duration - EDGE_SECONDS:
                labels[position] = label
            elif end > onset - EDGE_SECONDS and start < onset + duration + EDGE_SECONDS:
                labels[position] = IGNORE_INDEX
    return labels


def _column_labels(
    num_columns: int, seconds_per_column: float, events: Sequence[tuple[float, float, int]]
) -> torch.Tensor:
    """Per BEATs column (160 ms, longer than a 150-ms burst): the class of the event covering at
    least half of the shorter of the two, 0 where no event is, IGNORE_INDEX where one only grazes."""
    labels = torch.zeros(num_columns, dtype=torch.long)
    for column in range(num_columns):
        start, end = column * seconds_per_column, (column + 1) * seconds_per_column
        for onset, duration, label in events:
            overlap = min(end, onset + duration) - max(start, onset)
            if overlap >= 0.5 * min(duration, seconds_per_column):
                labels[column] = label
            elif overlap > -EDGE_SECONDS and labels[column] == 0:
                labels[column] = IGNORE_INDEX
    return labels


class _EncoderTask:
    """One encoder's pre-training data and heads."""

    def __init__(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], heads: nn.ModuleDict):
        self.inputs, self.targets, self.heads = inputs, targets, heads

    def __len__(self) -> int:
        return len(next(iter(self.targets.values())))

    def batch(self, rows: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return {k: v[rows] for k, v in self.inputs.items()}, {k: v[rows] for k, v in self.targets.items()}


def _image_task(model, processor, paths: list[Path], labels: list[dict]) -> _EncoderTask:
    """Images and video frames: the shape code of each quadrant patch."""
    images, targets = [], []
    for path, label in zip(paths, labels):
        if label["modality"] == "image":
            images.append(np.asarray(load_image(str(path))))
            targets.append(label["quadrants"])
        else:
            images += list(load_video(str(path), num_frames=len(label["frames"])).frames)
            targets += label["frames"]
    pixel_values = processor.image_processor(images, return_tensors="pt", input_data_format="channels_last")
    grid = model.config.num_media_tokens("image")
    if grid != 4:
        raise ValueError(f"image pre-training labels one patch per quadrant; the model has {grid} patches.")
    targets = torch.tensor(targets)  # (N, 4), row-major quadrants
    width = model.config.vision_config.hidden_size
    heads = nn.ModuleDict(
        {"content": nn.Linear(width, 1 + len(COLOURS) * len(SHAPES)), "quadrant": nn.Linear(width, grid)}
    )
    # The quadrant head keeps each patch's position in its features: the slot words name it.
    positions = torch.arange(grid).expand_as(targets)
    return _EncoderTask({"pixel_values": pixel_values["pixel_values"]}, {"content": targets, "quadrant": positions}, heads)


def _speech_task(model, processor, paths: list[Path], labels: list[dict]) -> _EncoderTask:
    waves = [load_audio(str(path)) for path in paths]
    features = processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt")["input_features"]
    positions = model.config.speech_config.max_source_positions
    seconds = processor.feature_extractor.chunk_length / positions
    targets = torch.stack(
        [
            _frame_labels(
                positions, seconds, [(o, lab["duration"], w + 1) for o, w in zip(lab["onsets"], lab["words"])]
            )
            for lab in labels
        ]
    )
    slots = torch.stack(
        [
            _frame_labels(positions, seconds, [(o, lab["duration"], k + 1) for k, o in enumerate(lab["onsets"])])
            for lab in labels
        ]
    )
    width = model.config.speech_config.d_model
    # The slot head lets the k-th aligner query find the k-th word by content, not by time.
    heads = nn.ModuleDict({"word": nn.Linear(width, 1 + len(WORDS)), "slot": nn.Linear(width, 1 + SPEECH_SLOTS)})
    queries = _query_slots("speech", labels)
    return _EncoderTask({"input_features": features}, {"word": targets, "slot": slots, QUERY_HEAD: queries}, heads)


def _audio_task(model, processor, paths: list[Path], labels: list[dict]) -> _EncoderTask:
    waves = [load_audio(str(path)) for path in paths]
    extractor = processor.audio_feature_extractor
    features = extractor(waves, return_tensors="pt")
    patch = model.config.audio_config.input_patch_size
    columns = features["audio_input_features"].shape[1] // patch
    seconds = patch * extractor.frame_shift_ms / 1000
    classes = {"kind": len(SOUND_KINDS), "note": len(NOTES), "loudness": len(LOUDNESS)}
    targets = {}
    for name in classes:
        rows = []
        for lab in labels:
            value = lab[name] + 1
            if name == "note" and SOUND_KINDS[lab["kind"]] == "noise":
                value = IGNORE_INDEX  # noise has no pitch
            rows.append(_column_labels(columns, seconds, [(o, lab["duration"], value) for o in lab["onsets"]]))
        targets[name] = torch.stack(rows)
    valid = ~features["audio_padding_mask"][:, : columns * patch].reshape(len(labels), columns, patch).all(dim=-1)
    counts = torch.tensor([len(lab["onsets"]) - 1 for lab in labels])  # 0..3
    targets["count"] = counts[:, None].expand(-1, columns).masked_fill(~valid, IGNORE_INDEX)
    classes["count"] = AUDIO_SLOTS - 1  # (+1 below): four counts
    targets[QUERY_HEAD] = _query_slots("audio", labels)
    width = model.config.audio_config.hidden_size
    heads = nn.ModuleDict({name: nn.Linear(width, size + 1) for name, size in classes.items()})
    inputs = {"input_features": features["audio_input_features"], "padding_mask": features["audio_padding_mask"]}
    return _EncoderTask(inputs, targets, heads)


# Speech and audio also pre-train their aligner (Whisper-decoder queries, Q-Former), as BLIP-2
# pre-trains its Q-Former before connecting it to a language model: query k learns to hold
# slot word k of the item (`transcribe`), through one linear head over the slot words.
QUERY_HEAD = "query"
SLOT_WORDS = {
    "speech": [*WORDS, SILENCE],
    "audio": [*SOUND_KINDS, *NOTES, NO_NOTE, *LOUDNESS, *COUNTS],
}


def _query_slots(modality: str, labels: list[dict]) -> torch.Tensor:
    """(items, queries) index in `SLOT_WORDS[modality]` of each query's slot word."""
    vocabulary = SLOT_WORDS[modality]
    rows = []
    for lab in labels:
        if modality == "speech":
            attributes = {"words": [WORDS[w] for w in lab["words"]]}
        else:
            kind = SOUND_KINDS[lab["kind"]]
            note = list(NOTES)[lab["note"]]
            attributes = {"kind": kind, "note": note, "loudness": list(LOUDNESS)[lab["loudness"]], "count": len(lab["onsets"])}
        rows.append([vocabulary.index(word) for word in transcribe(modality, attributes)])
    return torch.tensor(rows)


def _aligner_outputs(model: UniMoeForConditionalGeneration, modality: str, encoder_states: torch.Tensor) -> torch.Tensor:
    aligner = model.model.speech_aligner if modality == "speech" else model.model.audio_aligner
    return aligner(encoder_states)  # (batch, queries, width)


def _encoder_outputs(model: UniMoeForConditionalGeneration, modality: str, inputs: dict) -> torch.Tensor:
    """What each connector reads: (batch, positions, width); for BEATs its patches, time-major
    (`_per_column` averages them into one row per 160-ms column for the per-column heads)."""
    inner = model.model
    if modality == "image":
        config = model.config
        return select_image_features(
            inner.vision_tower,
            inputs["pixel_values"],
            config.vision_feature_layer,
            config.vision_feature_select_strategy,
        )
    if modality == "speech":
        return inner.speech_tower(inputs["input_features"], return_dict=True).last_hidden_state
    return inner.audio_tower(**inputs).last_hidden_state  # (batch, columns * bins, width), time-major


def _per_column(model: UniMoeForConditionalGeneration, inputs: dict, hidden: torch.Tensor) -> torch.Tensor:
    """BEATs patches (batch, columns * bins, width) averaged into one row per 160-ms column."""
    batch, _, width = hidden.shape
    bins = inputs["input_features"].shape[-1] // model.config.audio_config.input_patch_size
    return hidden.reshape(batch, -1, bins, width).mean(dim=2)


def pretrain_encoders(
    model: UniMoeForConditionalGeneration,
    processor: UniMoeProcessor,
    labels: dict[str, dict],
    media_dir: str | Path,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Trains the CLIP, Whisper and BEATs towers on per-position labels (`media_labels.json`
    of the synthetic task), and the speech and audio aligners on each query's slot word, one
    batch of each encoder per step. Returns the summed loss per step."""
    media_dir = Path(media_dir)
    builders = {"image": _image_task, "speech": _speech_task, "audio": _audio_task}
    tasks = {}
    for modality, build in builders.items():
        members = ("image", "video") if modality == "image" else (modality,)
        entries = [(path, label) for path, label in sorted(labels.items()) if label["modality"] in members]
        if entries:
            tasks[modality] = build(model, processor, [media_dir / p for p, _ in entries], [lab for _, lab in entries])
    towers = [model.model.vision_tower, model.model.speech_tower, model.model.audio_tower]
    for tower in towers:
        tower.requires_grad_(True)
    aligners = [model.model.speech_aligner, model.model.audio_aligner]
    query_heads = nn.ModuleDict(
        {
            modality: nn.Linear(aligner.query_tokens.shape[-1], len(SLOT_WORDS[modality]))
            for modality, aligner in zip(("speech", "audio"), aligners)
        }
    )
    parameters = [p for module in [*towers, *aligners, query_heads] for p in module.parameters()]
    parameters += [p for task in tasks.values() for p in task.heads.parameters()]
    rng = random.Random(seed)
    model.train()

    def loss_fn(step: int) -> torch.Tensor:
        total = 0.0
        for modality, task in tasks.items():
            inputs, targets = task.batch(rng.sample(range(len(task)), min(batch_size, len(task))))
            hidden = _encoder_outputs(model, modality, inputs)
            logits = {}
            if modality in query_heads:
                logits[QUERY_HEAD] = query_heads[modality](_aligner_outputs(model, modality, hidden))
            if modality == "audio":
                hidden = _per_column(model, inputs, hidden)
            logits.update({name: head(hidden) for name, head in task.heads.items()})
            for name, values in logits.items():
                total = total + F.cross_entropy(values.flatten(0, 1), targets[name].flatten(), ignore_index=IGNORE_INDEX)
        return total

    try:
        return _train(parameters, loss_fn, steps, lr, progress)
    finally:
        model.freeze_towers()


__all__ = ["encode_text_records", "pretrain_encoders", "pretrain_language_model"]
