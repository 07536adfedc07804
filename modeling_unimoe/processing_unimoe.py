"""Processor for Uni-MoE: media loading, features, the Vicuna-v1 chat template, token layout.

`UniMoeProcessor` turns text with placeholders (`<image>`, `<video>`, `<speech>`, `<audio>`) plus
media items into model inputs. Each item becomes exactly as many placeholder tokens as the model
has features for it: an image or a video `image_seq_length` / `video_seq_length`, a speech item
`speech_tokens_per_chunk` per 30 s chunk, an audio item `audio_tokens_per_chunk` per 30 s chunk.

Tokenisation is the official one, token for token: the prompt is split at every added token
(placeholders, `<s>`, `</s>`), every text piece is tokenised on its own with sentencepiece's
dummy prefix (so text after a placeholder starts with a bare "▁"), and one BOS starts the
sequence. This is what the official code gets from `tokenizer_image_audio_video_token` with the
transformers 4.31 slow LLaMA tokenizer.

This file travels with every saved checkpoint (remote code).
"""

import bisect
import functools
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import BatchFeature, ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from .feature_extraction_unimoe import UniMoeBeatsFeatureExtractor, split_speech_chunks
from .media_unimoe import (
    DEFAULT_MAX_IMAGE_PIXELS,
    SAMPLING_RATE,
    MediaError,
    describe_source,
    is_frame_list,
    load_audio,
    load_image,
    load_video,
)

MODALITIES = ("image", "video", "speech", "audio")
PLACEHOLDERS = {modality: f"<{modality}>" for modality in MODALITIES}
CONTENT_TYPES = ("text", *MODALITIES)
ROLES = ("system", "user", "assistant")
# Keys a chat content block may carry its media under, per type (HF conventions + ours).
SOURCE_KEYS = {
    "image": ("image", "url", "path", "base64"),
    "video": ("video", "url", "path"),
    "speech": ("speech", "audio", "url", "path", "array"),
    "audio": ("audio", "url", "path", "array"),
}
DEFAULT_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
SPIECE_UNDERLINE = "▁"

# The official `conv_vicuna_v1` format: `{system} USER: {q} ASSISTANT: {a}</s>USER: {q} ASSISTANT:`.
# A user turn lists its media first, as the official inference scripts build it:
# "<image>\n" + "<audio>\n" + "<video>\n" + query, with `<speech>` sharing the sound slot
# (official speech checkpoints put speech under `<audio>`); sound items keep their content order.
CHAT_TEMPLATE = r"""{%- macro text_of(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {{- content | selectattr("type", "equalto", "text") | map(attribute="text") | join("\n") -}}
    {%- endif -%}
{%- endmacro -%}
{%- if messages and messages[0]["role"] == "system" -%}
    {%- set system_message = text_of(messages[0]["content"]) -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_message = "SYSTEM_PROMPT" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{{- system_message ~ " " -}}
{%- for message in loop_messages -%}
    {%- if message["role"] == "user" -%}
        {{- "USER: " -}}
        {%- if message["content"] is string -%}
            {{- message["content"] -}}
        {%- else -%}
            {%- for block in message["content"] if block["type"] == "image" -%}
                {{- "<image>\n" -}}
            {%- endfor -%}
            {%- for block in message["content"] if block["type"] in ["audio", "speech"] -%}
                {{- "<" ~ block["type"] ~ ">\n" -}}
            {%- endfor -%}
            {%- for block in message["content"] if block["type"] == "video" -%}
                {{- "<video>\n" -}}
            {%- endfor -%}
            {{- text_of(message["content"]) -}}
        {%- endif -%}
        {{- " " -}}
    {%- elif message["role"] == "assistant" -%}
        {{- "ASSISTANT:" -}}
        {#- The answer's leading space is trained on: the official masking starts after the ":". -#}
        {%- generation -%}
            {{- " " ~ text_of(message["content"]) ~ "</s>" -}}
        {%- endgeneration -%}
    {%- else -%}
        {{- raise_exception("Uni-MoE chats have user and assistant turns after an optional system turn, got role " ~ message["role"]) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "ASSISTANT:" -}}
{%- endif -%}
""".replace("SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT)


@dataclass
class _Loaded:
    value: Any  # PIL image, (T, H, W, 3) frames or a 16 kHz waveform
    label: str  # names the item in errors


_CALL_KWARGS = {
    "return_tensors",
    "padding",
    "padding_side",
    "add_special_tokens",
    "sampling_rate",
    "return_attention_mask",
}


class UniMoeProcessor(ProcessorMixin):
    r"""Uni-MoE processor: LLaMA tokenizer, CLIP image processor (images and video frames),
    Whisper feature extractor (speech) and BEATs fbank extractor (general audio).

    Args:
        image_processor ([`CLIPImageProcessor`]): 336 px bicubic resize + centre crop by default.
        feature_extractor ([`WhisperFeatureExtractor`]): 80-bin log-mel, 30 s windows (speech).
        audio_feature_extractor ([`UniMoeBeatsFeatureExtractor`]): Kaldi fbank, 30 s chunks (audio).
        tokenizer ([`LlamaTokenizer`]): gets the placeholder tokens as added special tokens if missing.
        chat_template (`str`, *optional*): defaults to the official Vicuna-v1 format (`CHAT_TEMPLATE`).
        image_seq_length (`int`, defaults to 576): tokens per image ((336 / 14) ** 2).
        video_num_frames (`int`, defaults to 8): frames sampled from each video.
        video_seq_length (`int`, defaults to 576): tokens per video (frames are mean-pooled).
        speech_tokens_per_chunk (`int`, defaults to 50): Whisper query tokens per 30 s chunk.
        audio_tokens_per_chunk (`int`, defaults to 50): Q-Former query tokens per 30 s chunk.
        max_speech_chunks, max_audio_chunks (`int`, defaults to 20): longer items are an error.
        speech_chunking (`str`, defaults to `"exact"`): `"exact"` consecutive 30 s chunks, or
            `"official"` to reproduce the official 480001-sample stride.
        media_timeout (`float`, defaults to 10): seconds to wait for a URL.
        max_image_pixels (`int`): larger images are refused as decompression bombs.
    """

    def __init__(
        self,
        image_processor=None,
        feature_extractor=None,
        audio_feature_extractor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_seq_length: int = 576,
        video_num_frames: int = 8,
        video_seq_length: int = 576,
        speech_tokens_per_chunk: int = 50,
        audio_tokens_per_chunk: int = 50,
        max_speech_chunks: int = 20,
        max_audio_chunks: int = 20,
        speech_chunking: str = "exact",
        media_timeout: float | None = 10.0,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        if tokenizer is None:
            raise ValueError("UniMoeProcessor needs a tokenizer.")
        if speech_chunking not in ("exact", "official"):
            raise ValueError(f"speech_chunking must be 'exact' or 'official', got {speech_chunking!r}")
        image_processor = image_processor if image_processor is not None else _default_image_processor()
        if feature_extractor is None:
            from transformers import WhisperFeatureExtractor

            feature_extractor = WhisperFeatureExtractor()
        if audio_feature_extractor is None:
            audio_feature_extractor = UniMoeBeatsFeatureExtractor(max_chunks=max_audio_chunks)
        super().__init__(
            image_processor,
            feature_extractor,
            audio_feature_extractor,
            tokenizer,
            chat_template=chat_template if chat_template is not None else CHAT_TEMPLATE,
        )
        self.image_seq_length = image_seq_length
        self.video_num_frames = video_num_frames
        self.video_seq_length = video_seq_length
        self.speech_tokens_per_chunk = speech_tokens_per_chunk
        self.audio_tokens_per_chunk = audio_tokens_per_chunk
        self.max_speech_chunks = max_speech_chunks
        self.max_audio_chunks = max_audio_chunks
        self.speech_chunking = speech_chunking
        self.media_timeout = media_timeout
        self.max_image_pixels = max_image_pixels
        self._add_placeholder_tokens()

    # ------------------------------------------------------------------------------ setup

    @staticmethod
    def get_possibly_dynamic_module(module_name: str):
        # The BEATs extractor is no transformers class. Without torchvision the base lookup
        # also crashes on the dummy VIDEO_PROCESSOR_MAPPING, so answer for our class first.
        if module_name == UniMoeBeatsFeatureExtractor.__name__:
            return UniMoeBeatsFeatureExtractor
        return ProcessorMixin.get_possibly_dynamic_module(module_name)

    def _add_placeholder_tokens(self) -> None:
        vocab = self.tokenizer.get_vocab()
        missing = [token for token in PLACEHOLDERS.values() if token not in vocab]
        if missing:
            self.tokenizer.add_special_tokens(
                {"additional_special_tokens": missing}, replace_extra_special_tokens=False
            )
        self.placeholder_token_ids = {m: self.tokenizer.convert_tokens_to_ids(t) for m, t in PLACEHOLDERS.items()}
        self.image_token, self.video_token = PLACEHOLDERS["image"], PLACEHOLDERS["video"]
        self.speech_token, self.audio_token = PLACEHOLDERS["speech"], PLACEHOLDERS["audio"]
        self.image_token_id = self.placeholder_token_ids["image"]
        self.video_token_id = self.placeholder_token_ids["video"]
        self.speech_token_id = self.placeholder_token_ids["speech"]
        self.audio_token_id = self.placeholder_token_ids["audio"]

    @property
    def _added_token_re(self) -> re.Pattern:
        # Every added token splits the prompt, as the slow tokenizer's no-split list did.
        added = sorted(self.tokenizer.added_tokens_encoder, key=len, reverse=True)
        return _compile_alternation(tuple(added))

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids",
            "attention_mask",
            "pixel_values",
            "pixel_values_videos",
            "input_features",
            "audio_input_features",
            "audio_padding_mask",
        ]

    def tokens_per_item(self, modality: str, num_chunks: int = 1) -> int:
        """Placeholder tokens one media item expands to."""
        per_item = {
            "image": self.image_seq_length,
            "video": self.video_seq_length,
            "speech": self.speech_tokens_per_chunk,
            "audio": self.audio_tokens_per_chunk,
        }[modality]
        return per_item * num_chunks

    # ------------------------------------------------------------------------- tokenising

    def _encode_piece(self, piece: str, start: int) -> tuple[list[int], list[tuple[int, int]]]:
        """sentencepiece encoding of plain text (no added tokens): dummy prefix, spaces as "▁",
        BPE over the whole piece. Offsets are character spans in the prompt."""
        if not piece:
            return [], []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # not tokenizers-backed: its own encoding, one span for the piece
            ids = self.tokenizer.encode(piece, add_special_tokens=False)
            return ids, [(start, start + len(piece))] * len(ids)
        normalized = SPIECE_UNDERLINE + piece.replace(" ", SPIECE_UNDERLINE)
        byte_starts = list(itertools.accumulate((len(c.encode()) for c in normalized), initial=0))
        ids, offsets = [], []
        for token in backend.model.tokenize(normalized):
            first = bisect.bisect_right(byte_starts, token.offsets[0]) - 1
            last = bisect.bisect_left(byte_starts, token.offsets[1])
            ids.append(token.id)
            offsets.append((start + max(first - 1, 0), start + max(last - 1, 0)))
        return ids, offsets

    def _encode_prompt(
        self, text: str, expansions: dict[str, list[int]], add_bos: bool
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character spans of one prompt; the k-th placeholder of a modality
        becomes `expansions[modality][k]` placeholder tokens."""
        ids, offsets, cursor = [], [], 0
        next_item = dict.fromkeys(MODALITIES, 0)
        for match in self._added_token_re.finditer(text):
            piece_ids, piece_offsets = self._encode_piece(text[cursor : match.start()], cursor)
            ids += piece_ids
            offsets += piece_offsets
            token = match.group()
            modality = token[1:-1] if token in PLACEHOLDERS.values() else None
            count = 1
            if modality is not None:
                count = expansions[modality][next_item[modality]]
                next_item[modality] += 1
            ids += [self.tokenizer.added_tokens_encoder[token]] * count
            offsets += [match.span()] * count
            cursor = match.end()
        piece_ids, piece_offsets = self._encode_piece(text[cursor:], cursor)
        ids += piece_ids
        offsets += piece_offsets
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids, offsets = [bos] + ids, [(0, 0)] + offsets
        return ids, offsets

    def _count_placeholders(self, text: str) -> dict[str, int]:
        counts = dict.fromkeys(MODALITIES, 0)
        for match in self._added_token_re.finditer(text):
            token = match.group()
            if token in PLACEHOLDERS.values():
                counts[token[1:-1]] += 1
        return counts

    # ------------------------------------------------------------------------------ media

    def _assign_media(self, texts: list[str], media: dict[str, Any]) -> list[dict[str, list]]:
        """Per sample and modality, the items for its placeholders in order. Accepts a flat list
        (placeholder order, sample by sample) or one list per sample."""
        counts = [self._count_placeholders(text) for text in texts]
        assigned = [{m: [] for m in MODALITIES} for _ in texts]
        for modality in MODALITIES:
            wanted = [c[modality] for c in counts]
            items = media.get(modality)
            nested = _as_nested(items, modality, len(texts))
            if nested is not None:
                for b, (want, sample_items) in enumerate(zip(wanted, nested)):
                    if want != len(sample_items):
                        raise ValueError(
                            f"sample {b} has {want} {PLACEHOLDERS[modality]} placeholder(s) but {len(sample_items)} "
                            f"{modality} item(s) were given for it."
                        )
                    assigned[b][modality] = list(sample_items)
                continue
            flat = _as_flat(items, modality)
            if sum(wanted) != len(flat):
                per_sample = ", ".join(f"sample {b}: {w}" for b, w in enumerate(wanted))
                raise ValueError(
                    f"the text has {sum(wanted)} {PLACEHOLDERS[modality]} placeholder(s) ({per_sample}) but "
                    f"{len(flat)} {modality} item(s) were given; each item needs exactly one placeholder."
                )
            for b, run in enumerate(_split_like(flat, wanted)):
                assigned[b][modality] = run
        return assigned

    def _load_item(self, modality: str, item: Any, sampling_rate: int | None) -> Any:
        if modality == "image":
            return load_image(item, timeout=self.media_timeout, max_pixels=self.max_image_pixels)
        if modality == "video":
            return load_video(item, num_frames=self.video_num_frames, timeout=self.media_timeout).frames
        max_chunks = self.max_speech_chunks if modality == "speech" else self.max_audio_chunks
        return load_audio(item, sampling_rate=sampling_rate, max_seconds=max_chunks * 30.0, timeout=self.media_timeout)

    def _load_all(self, assigned: list[dict[str, list]], sampling_rate: int | None) -> dict[str, list[_Loaded]]:
        """Loads every item (all before any feature work), naming the item in any error."""
        loaded = {m: [] for m in MODALITIES}
        for modality in MODALITIES:
            for b, sample in enumerate(assigned):
                for item in sample[modality]:
                    label = f"{modality} item {len(loaded[modality])} (sample {b}) {describe_source(item)}"
                    try:
                        value = self._load_item(modality, item, sampling_rate)
                    except MediaError as err:
                        raise MediaError(f"{modality} item {len(loaded[modality])} (sample {b}): {err}") from err
                    loaded[modality].append(_Loaded(value, label))
        return loaded

    def _chunk_counts(self, items: list[_Loaded], modality: str) -> list[int]:
        if modality == "speech":
            official = self.speech_chunking == "official"
            chunk = self.feature_extractor.n_samples
            counts = [len(split_speech_chunks(item.value, chunk, official)) for item in items]
            limit = self.max_speech_chunks
        else:
            counts = [self.audio_feature_extractor.num_chunks(len(item.value)) for item in items]
            limit = self.max_audio_chunks
        for item, count in zip(items, counts):
            if count > limit:
                raise MediaError(
                    f"{item.label}: {len(item.value) / SAMPLING_RATE:.1f} s is {count} chunks of 30 s, "
                    f"more than max_{modality}_chunks={limit}"
                )
        return counts

    def _speech_features(self, items: list[_Loaded]) -> np.ndarray:
        official = self.speech_chunking == "official"
        chunk = self.feature_extractor.n_samples
        chunks = [piece for item in items for piece in split_speech_chunks(item.value, chunk, official)]
        features = self.feature_extractor(chunks, sampling_rate=SAMPLING_RATE, return_tensors="np")
        return features["input_features"].astype(np.float32)

    def _pixel_values(self, images: list[np.ndarray]) -> np.ndarray:
        out = self.image_processor(images, return_tensors="np", input_data_format="channels_last")
        return out["pixel_values"].astype(np.float32)

    def _features(self, loaded: dict[str, list[_Loaded]]) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
        """Model inputs per modality, and the placeholder count of every item."""
        speech_chunks = self._chunk_counts(loaded["speech"], "speech")
        audio_chunks = self._chunk_counts(loaded["audio"], "audio")
        tokens = {
            "image": [self.tokens_per_item("image")] * len(loaded["image"]),
            "video": [self.tokens_per_item("video")] * len(loaded["video"]),
            "speech": [self.tokens_per_item("speech", n) for n in speech_chunks],
            "audio": [self.tokens_per_item("audio", n) for n in audio_chunks],
        }
        data = {}
        if loaded["image"]:
            data["pixel_values"] = self._pixel_values([np.asarray(item.value) for item in loaded["image"]])
        if loaded["video"]:
            data["pixel_values_videos"] = np.stack([self._pixel_values(list(item.value)) for item in loaded["video"]])
        if loaded["speech"]:
            data["input_features"] = self._speech_features(loaded["speech"])
        if loaded["audio"]:
            waveforms = [item.value for item in loaded["audio"]]
            features = self.audio_feature_extractor(
                waveforms, sampling_rate=SAMPLING_RATE, max_chunks=self.max_audio_chunks
            )
            data.update(features)
        return data, tokens

    # ----------------------------------------------------------------------------- calling

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        videos: Any = None,
        audio: Any = None,
        speech: Any = None,
        audios: Any = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenises `text` (one prompt or a batch) with its placeholders expanded, and computes
        the media features.

        Media are given per modality, as a flat list in placeholder order (sample by sample) or
        one list per sample: `images` (paths, URLs, bytes, file objects, PIL images, arrays),
        `videos` (files of any FFmpeg format, or lists of frames / (T, H, W, 3) arrays), `speech`
        and `audios` (`audio` is an alias) as audio files, videos with a soundtrack,
        `(array, sampling_rate)` pairs, `{"array", "sampling_rate"}` dicts, or bare arrays with
        `sampling_rate=`.

        Keyword args: `return_tensors` ("pt" default, "np" or None), `padding_side` ("left"
        default, for generation; "right" for training), `add_special_tokens` (BOS, default True),
        `sampling_rate` (rate of bare audio arrays). `padding` and `return_attention_mask` are
        accepted for pipeline compatibility: a batch is always padded to its longest sample and
        always gets an attention mask.
        """
        if audio is not None and audios is not None:
            raise ValueError("pass general audio as `audios=` or `audio=`, not both")
        return self._process(
            text,
            {"image": images, "video": videos, "speech": speech, "audio": audios if audios is not None else audio},
            **kwargs,
        )

    def _process(
        self, text: Any, media: dict[str, Any], generation_spans: list[list[tuple[int, int]]] | None = None, **kwargs
    ) -> BatchFeature:
        unknown = set(kwargs) - _CALL_KWARGS
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments {sorted(unknown)}")
        if text is None:
            raise ValueError("UniMoeProcessor needs `text` (with one placeholder per media item).")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("`text` must be a string or a non-empty list of strings.")
        assigned = self._assign_media(texts, media)
        loaded = self._load_all(assigned, kwargs.get("sampling_rate"))
        data, tokens = self._features(loaded)

        add_bos = kwargs.get("add_special_tokens", True)
        per_sample = {m: _split_like(tokens[m], [len(sample[m]) for sample in assigned]) for m in MODALITIES}
        encoded = [
            self._encode_prompt(text, {m: per_sample[m][b] for m in MODALITIES}, add_bos)
            for b, text in enumerate(texts)
        ]

        padding_side = kwargs.get("padding_side") or "left"
        data.update(self._pad([ids for ids, _ in encoded], padding_side))
        if generation_spans is not None:
            masks = [_overlap_mask(offsets, spans) for (_, offsets), spans in zip(encoded, generation_spans)]
            data["assistant_masks"] = self._pad_values(masks, padding_side, 0)
        return BatchFeature(data, tensor_type=kwargs.get("return_tensors", "pt"))

    def _pad_values(self, rows: list[list[int]], side: str, value: int) -> list[list[int]]:
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        width = max(len(row) for row in rows)
        return [[value] * (width - len(r)) + r if side == "left" else r + [value] * (width - len(r)) for r in rows]

    def _pad(self, rows: list[list[int]], side: str) -> dict[str, list[list[int]]]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.unk_token_id or 0  # official: pad = unk
        return {
            "input_ids": self._pad_values(rows, side, pad_id),
            "attention_mask": self._pad_values([[1] * len(r) for r in rows], side, 0),
        }

    # ------------------------------------------------------------------------ chat template

    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = "pt",
        return_assistant_tokens_mask: bool = False,
        continue_final_message: bool = False,
        processor_kwargs: dict | None = None,
        **kwargs,
    ):
        """Renders one conversation or a batch with the Vicuna-v1 template and, with
        `tokenize=True`, loads the media named in its content blocks and returns model inputs.

        Content blocks: `{"type": "text", "text": ...}`, `{"type": "image", "image"|"url"|"path"|"base64": ...}`,
        `{"type": "video", "video"|"url"|"path": ..., "soundtrack": "speech"|"audio"}` (the soundtrack
        becomes one more speech/audio item, as the official demo feeds it), `{"type": "speech"|"audio",
        "speech"|"audio"|"url"|"path"|"array": ..., "sampling_rate": ...}`. Media belong to user turns.
        `return_assistant_tokens_mask=True` adds `assistant_masks` (1 on each answer and its `</s>`)
        and pads on the right unless `padding_side` says otherwise.
        """
        processor_kwargs = dict(processor_kwargs or {})
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = list(conversation) if batched else [conversation]
        rendered_convs, media = [], []
        for b, conv in enumerate(conversations):
            messages, items = _extract_media(conv, b)
            rendered_convs.append(messages)
            media.append(items)
        prompts, generation_indices = render_jinja_template(
            conversations=rendered_convs,
            chat_template=chat_template or self.chat_template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            return_assistant_tokens_mask=return_assistant_tokens_mask,
            **self.tokenizer.special_tokens_map,
            **kwargs,
        )
        if not tokenize:
            return prompts if batched else prompts[0]
        if return_assistant_tokens_mask:
            processor_kwargs.setdefault("padding_side", "right")
        processor_kwargs.setdefault("return_tensors", return_tensors)
        out = self._process(
            prompts,
            {m: [items[m] for items in media] for m in MODALITIES},
            generation_spans=generation_indices if return_assistant_tokens_mask else None,
            **processor_kwargs,
        )
        return out if return_dict else out["input_ids"]


@functools.lru_cache(maxsize=8)
def _compile_alternation(tokens: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(re.escape(token) for token in tokens))


def _default_image_processor():
    # The Pillow backend is what the official transformers 4.31 CLIPImageProcessor computed, and
    # it needs no torchvision.
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


def _split_like(values: list[int], sizes: list[int]) -> list[list[int]]:
    """`values` cut into consecutive runs of the given sizes (one run per sample)."""
    iterator = iter(values)
    return [list(itertools.islice(iterator, size)) for size in sizes]


def _overlap_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    return [int(any(start < end_ and stop > start_ for start_, end_ in spans)) for start, stop in offsets]


def _is_single_item(item: Any, modality: str) -> bool:
    # A list is a list of items, except a video given as a list of frames.
    return not isinstance(item, list) or (modality == "video" and is_frame_list(item))


def _as_flat(items: Any, modality: str) -> list:
    if items is None:
        return []
    return [items] if _is_single_item(items, modality) else list(items)


def _as_nested(items: Any, modality: str, batch_size: int) -> list[list] | None:
    """`items` as one list per sample when given that way, else None (a flat list)."""
    if isinstance(items, list) and len(items) == batch_size:
        if all(not _is_single_item(sample, modality) for sample in items):
            return items
    return None


def _media_source(block: dict, kind: str, where: str) -> Any:
    keys = [key for key in SOURCE_KEYS[kind] if block.get(key) is not None]
    if len(keys) != 1:
        raise ValueError(
            f"{where}: a {kind} block needs exactly one of the keys {SOURCE_KEYS[kind]}, got {sorted(block)}"
        )
    source = block[keys[0]]
    if keys[0] == "base64":
        source = source if str(source).startswith("data:") else f"data:image;base64,{source}"
    is_array = hasattr(source, "shape") or isinstance(source, list)
    if is_array and block.get("sampling_rate") is not None:
        source = (source, block["sampling_rate"])
    return source


def _extract_media(conversation: Sequence[dict], index: int) -> tuple[list[dict], dict[str, list]]:
    """Validates one conversation, takes its media out (per modality, in order) and returns the
    messages the template sees (media blocks reduced to their type)."""
    items = {m: [] for m in MODALITIES}
    messages = []
    for i, message in enumerate(conversation):
        where = f"conversation {index}, message {i}"
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"{where}: a message is a dict with 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES or (message["role"] == "system" and i != 0):
            raise ValueError(
                f"{where}: role {message['role']!r}; Uni-MoE chats have user and assistant turns after an optional first system turn"
            )
        content = message.get("content")
        if content is None or isinstance(content, str):
            messages.append({"role": message["role"], "content": content or ""})
            continue
        blocks = []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in CONTENT_TYPES:
                raise ValueError(
                    f"{where}, content block {j}: unknown content type {kind!r}; expected one of {CONTENT_TYPES}"
                )
            if kind == "text":
                blocks.append({"type": "text", "text": block.get("text", "")})
                continue
            if message["role"] != "user":
                raise ValueError(
                    f"{where}, content block {j}: media belong to user turns, got a {kind} block in a {message['role']!r} turn"
                )
            source = _media_source(block, kind, f"{where}, content block {j}")
            soundtrack = block.get("soundtrack") if kind == "video" else None
            if soundtrack is not None and soundtrack not in ("speech", "audio"):
                raise ValueError(
                    f"{where}, content block {j}: soundtrack must be 'speech' or 'audio', got {soundtrack!r}"
                )
            if soundtrack is not None:
                source = _reusable(source)
            items[kind].append(source)
            blocks.append({"type": kind})
            if soundtrack is not None:
                items[soundtrack].append(source)
                blocks.append({"type": soundtrack})
        messages.append({"role": message["role"], "content": blocks})
    return messages, items


def _reusable(source: Any) -> Any:
    """A file object read twice (frames, then soundtrack) is read into bytes once."""
    if hasattr(source, "read") and not isinstance(source, (str, bytes)):
        return source.read()
    return source


__all__ = ["CHAT_TEMPLATE", "DEFAULT_SYSTEM_PROMPT", "UniMoeProcessor"]

UniMoeProcessor.register_for_auto_class()
