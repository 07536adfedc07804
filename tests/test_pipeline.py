"""`pipeline("any-to-text")` in-process on a tiny random checkpoint.

The reference for every answer is the model itself, driven by hand: the processor's chat template
(or `__call__`), `model.generate` (or a greedy loop over full forward passes), and the tokenizer's
decode of the new tokens. (The fresh-process, remote-code path is in tests/test_hub.py.)
"""

import threading

import pytest
import torch
from transformers import AutoModel, AutoProcessor, TextIteratorStreamer, pipeline

from modeling_unimoe import AnyToTextPipeline, MediaError
from modeling_unimoe.pipeline_unimoe import split_media
from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image, write_video

NEW_TOKENS = 5


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline-media")
    return {
        "image": str(write_image(root / "photo.png")),
        "speech": str(write_audio(root / "question.wav", sine_wave(1.0))),
        "video": str(write_video(root / "clip.mp4", num_frames=8)),
        "audio": str(write_audio(root / "sound.flac", sine_wave(0.5, frequency=880.0))),
        "bad_image": str(_write(root / "broken.png", b"not a png")),
    }


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def model_and_processor(tiny_checkpoint):
    model = AutoModel.from_pretrained(tiny_checkpoint).eval()
    return model, AutoProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def pipe(model_and_processor):
    model, processor = model_and_processor
    return pipeline("any-to-text", model=model, processor=processor, device="cpu")


def user(*blocks, text="What is going on?"):
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": text}]}]


def reference_answer(model, processor, inputs, **generate_kwargs) -> tuple[list[int], str]:
    """New token ids and their decoded text, straight from `generate`."""
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, **generate_kwargs)
    new_ids = output[0, inputs["input_ids"].shape[1] :].tolist()
    return new_ids, processor.decode(new_ids, skip_special_tokens=True)


def chat_inputs(processor, chat):
    return processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)


def test_in_process_pipeline_is_registered_and_needs_no_torchvision(pipe):
    assert isinstance(pipe, AnyToTextPipeline)
    assert pipe.task == "any-to-text"
    # AnyToAnyPipeline would demand torchvision for an image model; ours builds without it.
    assert pipe.processor.image_processor.__class__.__name__ == "CLIPImageProcessorPil"


def test_chat_answer_matches_generate_and_decode(pipe, model_and_processor, media):
    model, processor = model_and_processor
    chat = user({"type": "image", "path": media["image"]}, {"type": "speech", "path": media["speech"]})
    _, expected = reference_answer(model, processor, chat_inputs(processor, chat))

    new_text = pipe(chat, max_new_tokens=NEW_TOKENS, return_full_text=False)
    full = pipe(chat, max_new_tokens=NEW_TOKENS)

    assert new_text == [{"input_text": chat, "generated_text": expected}]
    assert full[0]["generated_text"] == [*chat, {"role": "assistant", "content": expected}]


def test_answer_matches_a_greedy_loop_without_generate(pipe, model_and_processor, media):
    """KV-cached `generate` inside the pipeline == argmax over full forward passes (media re-encoded each step)."""
    model, processor = model_and_processor
    chat = user({"type": "image", "path": media["image"]})
    inputs = chat_inputs(processor, chat)
    ids = inputs["input_ids"]
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(**{**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    new_ids = ids[0, inputs["input_ids"].shape[1] :]

    out = pipe(chat, max_new_tokens=NEW_TOKENS, eos_token_id=None, return_tensors=True)

    torch.testing.assert_close(out[0]["generated_token_ids"][-NEW_TOKENS:], new_ids)


def test_prompt_with_placeholders_and_media_keywords(pipe, model_and_processor, media):
    model, processor = model_and_processor
    prompt = "<image>\n<speech>\nWhat is going on?"
    inputs = processor(text=prompt, images=[media["image"]], speech=[media["speech"]])
    _, expected = reference_answer(model, processor, inputs)

    out = pipe(text=prompt, images=media["image"], speech=[media["speech"]], max_new_tokens=NEW_TOKENS)
    as_dict = pipe(
        {"text": prompt, "images": [media["image"]], "speech": [media["speech"]]},
        max_new_tokens=NEW_TOKENS,
        return_full_text=False,
    )

    # As the text-generation pipeline: full text = prompt + continuation, which starts with the
    # space of its first word-initial token.
    assert out[0]["generated_text"].startswith(prompt)
    assert out[0]["generated_text"][len(prompt) :].strip() == expected.strip()
    assert as_dict[0]["generated_text"].strip() == expected.strip()


def test_generation_arguments_pass_through(pipe, media):
    chat = user({"type": "image", "path": media["image"]})
    three = pipe(chat, generate_kwargs={"max_new_tokens": 3, "eos_token_id": None}, return_tensors=True)
    beams = pipe(chat, max_new_tokens=3, num_beams=2, num_return_sequences=2, return_full_text=False)
    prompt_length = chat_inputs(pipe.processor, chat)["input_ids"].shape[1]

    assert three[0]["generated_token_ids"].shape[-1] == prompt_length + 3
    assert len(beams) == 2 and all(isinstance(r["generated_text"], str) for r in beams)
    with pytest.raises(ValueError, match="given twice"):
        pipe(chat, max_new_tokens=2, generate_kwargs={"max_new_tokens": 2})


def test_mixed_modality_batch_equals_one_by_one(pipe, media):
    chats = [
        user({"type": "image", "path": media["image"]}, {"type": "speech", "path": media["speech"]}),
        user(text="Say something, with a longer question so that padding happens?"),
        user({"type": "video", "path": media["video"]}, {"type": "audio", "path": media["audio"]}),
    ]
    kwargs = {"max_new_tokens": NEW_TOKENS, "return_full_text": False}
    one_by_one = [pipe(chat, **kwargs) for chat in chats]

    batched = pipe(chats, batch_size=2, **kwargs)  # a full batch of 2 and a last batch of 1

    assert [r[0]["generated_text"] for r in batched] == [r[0]["generated_text"] for r in one_by_one]
    assert [r[0]["input_text"] for r in batched] == chats


def test_prompt_batch_takes_flat_or_per_prompt_media(pipe, media):
    prompts = ["<image>\nWhat?", "Nothing here, but a longer prompt.", "<image>\n<image>\nAnd here?"]
    kwargs = {"max_new_tokens": NEW_TOKENS, "return_full_text": False}
    image = media["image"]
    flat = pipe(text=prompts, images=[image, image, image], batch_size=3, **kwargs)
    nested = pipe(text=prompts, images=[[image], [], [image, image]], batch_size=3, **kwargs)
    single = pipe(text=prompts[2], images=[image, image], **kwargs)

    assert flat == nested
    assert flat[2] == single


def test_split_media_assigns_items_to_prompts_in_placeholder_order():
    texts = ["<image> <image>", "none", "<image>"]
    assert split_media(texts, "image", ["a", "b", "c"]) == [["a", "b"], [], ["c"]]
    assert split_media(texts, "image", [["a", "b"], [], ["c"]]) == [["a", "b"], [], ["c"]]
    with pytest.raises(ValueError, match=r"\[2, 0, 1\] <image> placeholder\(s\) .* but 2 image item"):
        split_media(texts, "image", ["a", "b"])


def test_stream_yields_the_answer_piece_by_piece(pipe, media):
    chat = user({"type": "image", "path": media["image"]})
    expected = pipe(chat, max_new_tokens=NEW_TOKENS, return_full_text=False)[0]["generated_text"]

    pieces = list(pipe.stream(chat, max_new_tokens=NEW_TOKENS))

    assert "".join(pieces) == expected
    assert all(pieces)


def test_streamer_argument_with_a_thread(pipe, media):
    """The documented transformers way: a `TextIteratorStreamer` passed to the call."""
    chat = user({"type": "image", "path": media["image"]})
    expected = pipe(chat, max_new_tokens=NEW_TOKENS, return_full_text=False)[0]["generated_text"]
    streamer = TextIteratorStreamer(pipe.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = threading.Thread(target=pipe, args=(chat,), kwargs={"streamer": streamer, "max_new_tokens": NEW_TOKENS})
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == expected


def test_stream_reraises_a_media_error(pipe, media):
    chat = user({"type": "image", "path": media["bad_image"]})
    with pytest.raises(MediaError, match="broken.png"):
        list(pipe.stream(chat, max_new_tokens=2))


def test_continue_final_message_extends_the_assistant_turn(pipe, model_and_processor):
    model, processor = model_and_processor
    chat = [
        {"role": "user", "content": "Count."},
        {"role": "assistant", "content": "one two"},
    ]
    inputs = processor.apply_chat_template(chat, continue_final_message=True, tokenize=True, return_dict=True)
    ids, _ = reference_answer(model, processor, inputs)
    prompt_text = processor.decode(inputs["input_ids"][0], skip_special_tokens=True)
    expected = processor.decode(inputs["input_ids"][0].tolist() + ids, skip_special_tokens=True)[len(prompt_text) :]

    out = pipe(chat, max_new_tokens=NEW_TOKENS)

    assert out[0]["generated_text"][-1] == {"role": "assistant", "content": "one two" + expected}


def test_input_errors_are_clear(pipe, media):
    chat = user({"type": "image", "path": media["image"]})
    with pytest.raises(ValueError, match="content blocks"):
        pipe(chat, images=[media["image"]])
    with pytest.raises(ValueError, match="needs `text`"):
        pipe(images=[media["image"]])
    with pytest.raises(ValueError, match=r"\[1, 0\] <image> placeholder"):
        pipe(text=["<image>", "no media"], images=[])
    with pytest.raises(MediaError, match="image item 0 .*broken.png"):
        pipe(user({"type": "image", "path": media["bad_image"]}), max_new_tokens=2)
    with pytest.raises(TypeError, match="unexpected keyword"):
        pipe(chat, max_new_tokens=2, not_a_parameter=1)


def test_sample_dicts_in_a_batch(pipe, media):
    prompts = ["<image>\nWhat?", "No media."]
    kwargs = {"max_new_tokens": NEW_TOKENS, "return_full_text": False}
    samples = [{"text": prompts[0], "images": [media["image"]]}, {"text": prompts[1]}]
    assert pipe(samples, batch_size=2, **kwargs) == pipe(text=prompts, images=[media["image"]], **kwargs)


def test_installed_pipeline_keeps_the_task_after_a_checkpoint_copy_loads(tiny_checkpoint, model_and_processor):
    copy = pipeline("any-to-text", model=str(tiny_checkpoint), trust_remote_code=True, device="cpu")
    model, processor = model_and_processor
    again = pipeline("any-to-text", model=model, processor=processor, device="cpu")
    assert type(copy).__module__.startswith("transformers_modules.")
    assert type(again) is AnyToTextPipeline
