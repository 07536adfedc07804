"""`pipeline("any-to-text")`: answers in text to any mix of text, images, video, speech and audio.

transformers 5.x has "any-to-any" and "image-text-to-text" but no "any-to-text" task, so the
checkpoint ships this one. A saved folder records it in `config.json` (`custom_pipelines`) next
to this file, and `pipeline("any-to-text", model=DIR, trust_remote_code=True)` loads it from
there; importing the `modeling_unimoe` package registers it for in-process use
(`pipeline("any-to-text", model=model, processor=processor)`).

Inputs, one sample or a list of them (`batch_size=N` batches them, mixed modalities included):
- a chat, `[{"role": "user", "content": [{"type": "image", "path": ...}, {"type": "text", ...}]}]`
  (content types text/image/video/speech/audio, any source the processor takes);
- a prompt with placeholders plus media keywords: `text="<image>\\n<speech>\\nWhy?", images=[...],
  speech=[...]` (also `videos=`, `audios=`; a list of prompts takes one media list per prompt or
  one flat list in placeholder order);
- a dict `{"text": ..., "images": ..., "videos": ..., "speech": ..., "audios": ...}`.

Outputs follow the transformers text pipelines: `[{"input_text": ..., "generated_text": ...}]` per
sample, where `generated_text` is the chat with the answer appended (or the prompt plus its
continuation) and only the new text with `return_full_text=False`; `return_tensors=True` gives
`generated_token_ids`. Generation parameters pass through (`max_new_tokens=`, `do_sample=`,
`generate_kwargs={...}`, `streamer=`); `AnyToTextPipeline.stream(...)` yields the answer as it is
generated.

This file travels with every saved checkpoint (remote code): it imports only installed libraries
and its siblings, and does nothing at import but define and register the pipeline.
"""

import os
import threading
from collections.abc import Iterator, Sized
from typing import Any

import torch
from transformers import AutoModel, GenerationConfig, TextIteratorStreamer
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.any_to_any import AnyToAnyPipeline, ReturnType
from transformers.pipelines.base import Pipeline
from transformers.utils.chat_template_utils import Chat, is_valid_message

from .media_unimoe import is_frame_list

TASK = "any-to-text"
MODALITIES = ("image", "video", "speech", "audio")
# Keyword of the pipeline (and processor) -> modality; `audio=` is an alias of `audios=`.
MEDIA_KEYWORDS = {"images": "image", "videos": "video", "speech": "speech", "audios": "audio"}
# Model inputs whose rows belong to media items: a batch concatenates them in sample order, the
# order in which the model fills each modality's placeholders.
MEDIA_INPUTS = ("pixel_values", "pixel_values_videos", "input_features", "audio_input_features", "audio_padding_mask")
# `generate()` arguments that are no `GenerationConfig` fields but may be passed to the pipeline.
EXTRA_GENERATE_KWARGS = {
    "generation_config",
    "streamer",
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
}


def _is_chat(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(is_valid_message(m) for m in value)


def _placeholder_count(text: str, modality: str) -> int:
    return text.count(f"<{modality}>")


def _as_items(value: Any, modality: str) -> list:
    """One sample's media of a modality as a list (a video may be a list of frames)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and not (modality == "video" and is_frame_list(list(value))):
        return list(value)
    return [value]


def split_media(texts: list[str], modality: str, value: Any) -> list[list]:
    """The items of `modality` for each prompt: `value` is one list per prompt, or one flat list in
    placeholder order (prompt by prompt), as `UniMoeProcessor.__call__` takes them."""
    wanted = [_placeholder_count(text, modality) for text in texts]
    if value is None:
        return [[] for _ in texts]
    nested = isinstance(value, (list, tuple)) and len(value) == len(texts) and len(texts) > 1
    if nested:
        per_sample = [_as_items(items, modality) for items in value]
        if [len(items) for items in per_sample] == wanted:
            return per_sample
    flat = _as_items(value, modality)
    if len(flat) != sum(wanted):
        raise ValueError(
            f"The prompts have {wanted} <{modality}> placeholder(s) (per prompt) but {len(flat)} {modality} item(s) "
            f"were given; pass one item per placeholder, as a flat list or one list per prompt."
        )
    starts = [sum(wanted[:i]) for i in range(len(wanted))]
    return [flat[start : start + count] for start, count in zip(starts, wanted)]


def _sample_from_dict(sample: dict) -> dict:
    unknown = set(sample) - {"text", "audio", *MEDIA_KEYWORDS, *MODALITIES}
    if unknown or not isinstance(sample.get("text"), str):
        raise ValueError(
            "A prompt sample is a dict with a 'text' string (placeholders <image> <video> <speech> <audio>) and "
            f"optional 'images', 'videos', 'speech', 'audios' lists; got keys {sorted(sample)}."
        )
    media = {}
    for key, value in sample.items():
        if key != "text" and value is not None:
            modality = MEDIA_KEYWORDS.get(key, key)
            if modality in media:
                raise ValueError(f"{modality} media given twice (keys {sorted(sample)}).")
            media[modality] = _as_items(value, modality)
    return {"text": sample["text"], **media}


class AnyToTextPipeline(AnyToAnyPipeline):
    """Text generation from text, images, video, speech and audio with a Uni-MoE checkpoint.

    Built by `pipeline("any-to-text", model=..., trust_remote_code=True)` or directly as
    `AnyToTextPipeline(model=model, processor=processor)`. See the module docstring for inputs and
    outputs. Unlike `AnyToAnyPipeline` it needs neither torchvision nor torchcodec (the processor
    decodes media with Pillow and PyAV), and it batches samples with its own collate function:
    left padding, and each media input concatenated in sample order.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=256)

    def __init__(self, *args, **kwargs):
        # `AnyToAnyPipeline.__init__` requires torchvision for image/video models; the base
        # class sets up everything else.
        Pipeline.__init__(self, *args, **kwargs)
        if self.processor is None:
            raise ValueError(f"The {TASK} pipeline needs the model's processor: pass `processor=`.")
        if self.tokenizer is None:
            self.tokenizer = self.processor.tokenizer

    # ------------------------------------------------------------------------------ calling

    def __call__(
        self,
        text: Any = None,
        images: Any = None,
        videos: Any = None,
        speech: Any = None,
        audios: Any = None,
        *,
        audio: Any = None,
        **kwargs,
    ) -> list:
        """Generates an answer for one sample, or for each of a list of samples.

        Args:
            text: a chat (list of messages), a prompt with placeholders, a sample dict, or a list,
                generator or dataset of these.
            images, videos, speech, audios (`audio` is an alias): media of prompt inputs (chats
                carry theirs in their content blocks).
            **kwargs: `max_new_tokens`, `return_full_text`, `return_tensors`,
                `continue_final_message`, `skip_special_tokens`, `stop_sequence`, `streamer`,
                `generate_kwargs`, any `GenerationConfig` field, `processor_kwargs` (or other
                processor keywords), `batch_size`, `num_workers`.

        Returns:
            For one sample a list of records (one per returned sequence), for a list of samples a
            list of such lists.
        """
        if audio is not None and audios is not None:
            raise ValueError("pass general audio as `audios=` or `audio=`, not both")
        media = {"image": images, "video": videos, "speech": speech, "audio": audios if audios is not None else audio}
        media = {modality: value for modality, value in media.items() if value is not None}
        if text is None:
            raise ValueError(
                f"The {TASK} pipeline needs `text`: a chat (list of messages with typed content) or a prompt with "
                "<image>/<video>/<speech>/<audio> placeholders."
            )
        inputs = self._normalize(text, media)
        return Pipeline.__call__(self, inputs, **kwargs)

    def _normalize(self, text: Any, media: dict[str, Any]) -> Any:
        if media and (_is_chat(text) or not isinstance(text, (str, list, tuple))):
            raise ValueError(
                "Media keywords (images=, videos=, speech=, audios=) go with text prompts; a chat carries its media "
                "in its content blocks and a sample dict under its own keys."
            )
        if isinstance(text, str):
            return {"text": text, **{m: _as_items(v, m) for m, v in media.items()}}
        if _is_chat(text):
            return Chat(list(text))
        if isinstance(text, (list, tuple)) and text and all(_is_chat(chat) for chat in text):
            if media:
                raise ValueError("A list of chats carries its media in the content blocks, not in keywords.")
            return [Chat(list(chat)) for chat in text]
        if isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text):
            texts = list(text)
            per_modality = {m: split_media(texts, m, v) for m, v in media.items()}
            return [{"text": t, **{m: items[b] for m, items in per_modality.items()}} for b, t in enumerate(texts)]
        if media:
            raise ValueError("Media keywords go with a prompt string or a list of prompt strings.")
        return text  # a sample dict, a list of them, a generator or a dataset: checked per sample

    def _sanitize_parameters(
        self,
        max_new_tokens: int | None = None,
        generate_kwargs: dict | None = None,
        return_full_text: bool | None = None,
        return_tensors: bool | None = None,
        return_type: ReturnType | None = None,
        continue_final_message: bool | None = None,
        skip_special_tokens: bool | None = None,
        clean_up_tokenization_spaces: bool | None = None,
        stop_sequence: str | list[str] | None = None,
        processor_kwargs: dict | None = None,
        **kwargs,
    ):
        generation_keys = {key for key in vars(GenerationConfig()) if not key.startswith("_")} | EXTRA_GENERATE_KWARGS
        generate_kwargs = dict(generate_kwargs or {})
        for key in generation_keys & kwargs.keys():
            generate_kwargs[key] = kwargs.pop(key)
        if max_new_tokens is not None:
            if "max_new_tokens" in generate_kwargs:
                raise ValueError("`max_new_tokens` was given twice: directly and in `generate_kwargs`.")
            generate_kwargs["max_new_tokens"] = max_new_tokens
        if stop_sequence is not None:
            generate_kwargs["stop_strings"] = [stop_sequence] if isinstance(stop_sequence, str) else stop_sequence
            generate_kwargs["tokenizer"] = self.processor.tokenizer

        preprocess_params = {}
        # Other keywords are the processor's (it rejects unknown ones by name).
        processor_kwargs = {**(processor_kwargs or {}), **kwargs}
        if processor_kwargs:
            preprocess_params["processor_kwargs"] = processor_kwargs
        if continue_final_message is not None:
            preprocess_params["continue_final_message"] = continue_final_message

        if return_full_text is not None and return_tensors:
            raise ValueError("`return_full_text` and `return_tensors` are mutually exclusive.")
        if return_type is None and return_full_text is not None:
            return_type = ReturnType.FULL_TEXT if return_full_text else ReturnType.NEW_TEXT
        elif return_type is None and return_tensors:
            return_type = ReturnType.TENSORS
        postprocess_params = {}
        if return_type is not None:
            postprocess_params["return_type"] = return_type
        if continue_final_message is not None:
            postprocess_params["continue_final_message"] = continue_final_message
        if skip_special_tokens is not None:
            postprocess_params["skip_special_tokens"] = skip_special_tokens
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        forward_params = {"generate_kwargs": generate_kwargs} if generate_kwargs else {}
        return preprocess_params, forward_params, postprocess_params

    # --------------------------------------------------------------------------- the steps

    def preprocess(
        self, inputs: Any, continue_final_message: bool | None = None, processor_kwargs: dict | None = None
    ) -> dict:
        processor_kwargs = {**(processor_kwargs or {}), "return_tensors": "pt"}
        if isinstance(inputs, (list, tuple)) and _is_chat(inputs):
            inputs = Chat(list(inputs))
        if isinstance(inputs, Chat) or hasattr(inputs, "messages"):
            messages = inputs.messages
            if continue_final_message is None:
                continue_final_message = messages[-1]["role"] == "assistant"
            model_inputs = self.processor.apply_chat_template(
                messages,
                add_generation_prompt=not continue_final_message,
                continue_final_message=continue_final_message,
                tokenize=True,
                return_dict=True,
                processor_kwargs=processor_kwargs,
            )
        else:
            sample = _sample_from_dict(inputs) if isinstance(inputs, dict) else None
            if sample is None:
                raise ValueError(
                    f"Unsupported {TASK} input {type(inputs).__name__}: pass a chat, a prompt string or a sample dict."
                )
            model_inputs = self.processor(
                text=sample["text"],
                images=sample.get("image"),
                videos=sample.get("video"),
                speech=sample.get("speech"),
                audios=sample.get("audio"),
                **processor_kwargs,
            )
            inputs = sample["text"]
        model_inputs = dict(model_inputs.to(dtype=self.dtype))
        model_inputs["prompt_text"] = inputs
        return model_inputs

    def _forward(self, model_inputs: dict, generate_kwargs: dict | None = None) -> dict:
        prompt_text = model_inputs.pop("prompt_text")
        input_ids = model_inputs["input_ids"]
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {})
        output = self.model.generate(**model_inputs, **generate_kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        # (batch · num_return_sequences, length) -> (batch, num_return_sequences, length): the
        # batch iterator splits outputs along dim 0, one sample each.
        sequences = sequences.reshape(input_ids.shape[0], -1, sequences.shape[-1])
        return {"generated_sequence": sequences, "input_ids": input_ids, "prompt_text": prompt_text}

    def postprocess(
        self,
        model_outputs: dict,
        return_type: ReturnType = ReturnType.FULL_TEXT,
        continue_final_message: bool | None = None,
        skip_special_tokens: bool = True,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[dict]:
        prompt = model_outputs["prompt_text"]
        is_chat = isinstance(prompt, Chat) or hasattr(prompt, "messages")
        input_text = prompt.messages if is_chat else prompt
        sequences = model_outputs["generated_sequence"][0]  # (num_return_sequences, length)
        prompt_ids = model_outputs["input_ids"][0]
        if return_type == ReturnType.TENSORS:
            return [{"input_text": input_text, "generated_token_ids": sequence} for sequence in sequences]

        decode_kwargs = {"skip_special_tokens": skip_special_tokens}
        if clean_up_tokenization_spaces is not None:
            decode_kwargs["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        # As the text-generation pipeline: the new text is what decoding the whole sequence adds
        # to the decoded prompt (keeps the space a word-initial first token carries).
        prompt_length = len(self.tokenizer.decode(prompt_ids, **decode_kwargs))
        if continue_final_message is None and is_chat:
            continue_final_message = input_text[-1]["role"] == "assistant"
        records = []
        for sequence in sequences:
            new_text = self.tokenizer.decode(sequence, **decode_kwargs)[prompt_length:]
            if is_chat and not continue_final_message and new_text.startswith(" "):
                new_text = new_text[1:]  # the template's "ASSISTANT: " separator, not the answer
            generated = new_text
            if return_type == ReturnType.FULL_TEXT:
                generated = self._full_text(prompt, input_text, new_text, is_chat, continue_final_message)
            records.append({"input_text": input_text, "generated_text": generated})
        return records

    @staticmethod
    def _full_text(prompt: Any, input_text: Any, new_text: str, is_chat: bool, continue_final_message: bool) -> Any:
        if not is_chat:
            return prompt + new_text
        messages = list(input_text)
        if not continue_final_message:
            return messages + [{"role": "assistant", "content": new_text}]
        last = dict(messages[-1])
        if isinstance(last["content"], str):
            last["content"] = last["content"] + new_text
        else:
            blocks = list(last["content"])
            blocks[-1] = {**blocks[-1], "text": blocks[-1].get("text", "") + new_text}
            last["content"] = blocks
        return messages[:-1] + [last]

    # ---------------------------------------------------------------------------- saving

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """The model's Hub folder (config with `custom_pipelines`, code, weights, card) plus the
        processor's files: unlike `Pipeline.save_pretrained`, which saves no processor."""
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Uploads `save_pretrained`'s folder as one commit (see `UniMoePreTrainedModel.push_to_hub`)."""
        return self.model.push_to_hub(repo_id, processor=self.processor, **kwargs)

    # -------------------------------------------------------------------------- batching

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        if batch_size == 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        from torch.utils.data import DataLoader
        from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            num_workers = min(num_workers, 1)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self.collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def collate(self, samples: list[dict]) -> dict:
        """Stacks preprocessed samples into one generation batch: token rows padded on the left
        (pad id, attention 0), media inputs concatenated in sample order."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(sample["input_ids"].shape[-1] for sample in samples)
        input_ids = torch.full((len(samples), width), pad_id, dtype=samples[0]["input_ids"].dtype)
        attention_mask = torch.zeros((len(samples), width), dtype=samples[0]["attention_mask"].dtype)
        for row, sample in enumerate(samples):
            length = sample["input_ids"].shape[-1]
            input_ids[row, width - length :] = sample["input_ids"][0]
            attention_mask[row, width - length :] = sample["attention_mask"][0]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        unknown = {key for sample in samples for key in sample} - {*batch, *MEDIA_INPUTS, "prompt_text"}
        if unknown:
            raise ValueError(f"Cannot batch the processor outputs {sorted(unknown)}; use batch_size=1.")
        for key in MEDIA_INPUTS:
            parts = [sample[key] for sample in samples if key in sample]
            if parts:
                batch[key] = torch.cat(parts)
        batch["prompt_text"] = [sample["prompt_text"] for sample in samples]
        return batch

    # ------------------------------------------------------------------------- streaming

    def stream(
        self,
        text: Any = None,
        images: Any = None,
        videos: Any = None,
        speech: Any = None,
        audios: Any = None,
        *,
        audio: Any = None,
        timeout: float | None = None,
        **kwargs,
    ) -> Iterator[str]:
        """Yields the answer to one sample piece by piece while it is generated.

        Takes the arguments of `__call__`. Generation runs in a background thread and feeds a
        `TextIteratorStreamer` (`timeout`: seconds to wait for each piece). An error in that
        thread (a bad media file, say) is raised here once the stream stops.
        """
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
        errors: list[BaseException] = []

        def generate() -> None:
            try:
                self(text, images, videos, speech, audios, audio=audio, streamer=streamer, **kwargs)
            except BaseException as error:  # handed to the consuming thread
                errors.append(error)
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        for piece in streamer:
            if piece:  # the streamer emits "" while a character's bytes are incomplete
                yield piece
        thread.join()
        if errors:
            raise errors[0]


def register_pipeline(*, replace: bool = False) -> None:
    """Makes `pipeline("any-to-text", model=model, processor=processor)` work in this process.

    A checkpoint's copy of this file (remote code) registers only where nothing is registered;
    the installed package registers with `replace=True`, so its class wins whatever the order.
    """
    if TASK in PIPELINE_REGISTRY.supported_tasks and not replace:
        return
    PIPELINE_REGISTRY.supported_tasks.pop(TASK, None)  # no "already registered" warning
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=AnyToTextPipeline, pt_model=AutoModel, type="multimodal")


register_pipeline()

__all__ = ["TASK", "AnyToTextPipeline", "register_pipeline", "split_media"]
