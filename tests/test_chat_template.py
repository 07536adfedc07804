"""Chat template and tokenisation, token for token against the official scheme.

The independent reference is `sentencepiece` itself on the same tiny model file, driven the way
the official code drives the transformers 4.31 slow LLaMA tokenizer: the prompt is split at every
placeholder (and the slow tokenizer splits at `</s>`), each text piece is encoded on its own with
its dummy prefix, and only the first piece keeps BOS.
"""

import numpy as np
import pytest
import sentencepiece as spm

from modeling_unimoe.processing_unimoe import DEFAULT_SYSTEM_PROMPT
from unimoe_conversion.tiny_checkpoint import build_tiny_processor, tiny_sentencepiece_model
from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image, write_video

BOS, EOS = 1, 2
IMAGE, VIDEO, SPEECH, AUDIO = 400, 401, 402, 403
N = 4  # tiny processor: 4 tokens per image / video / 30 s chunk


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_proto=tiny_sentencepiece_model())


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return {
        "image": str(write_image(root / "i.png")),
        "speech": str(write_audio(root / "s.wav", sine_wave(1.0))),
        "audio": str(write_audio(root / "a.flac", sine_wave(1.0, frequency=880.0))),
        "video": str(write_video(root / "v.mp4", num_frames=16, fps=8, audio=sine_wave(2.0))),
    }


def test_rendered_prompt_is_official_vicuna_v1(processor):
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is shown?"},
                {"type": "video", "path": "v.mp4"},
                {"type": "audio", "path": "a.wav"},
                {"type": "image", "path": "i.png"},
            ],
        },
        {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": "Why?"},
    ]
    system = DEFAULT_SYSTEM_PROMPT
    assert system == (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    # official user turn: "<image>\n" + "<audio>\n" + "<video>\n" + query, whatever the block order
    assert processor.apply_chat_template(chat, add_generation_prompt=True) == (
        f"{system} USER: <image>\n<audio>\n<video>\nWhat is shown? ASSISTANT: A red square.</s>USER: Why? ASSISTANT:"
    )
    # without a generation prompt the last user turn keeps its separator, as conv.get_prompt()
    assert processor.apply_chat_template(chat) == (
        f"{system} USER: <image>\n<audio>\n<video>\nWhat is shown? ASSISTANT: A red square.</s>USER: Why? "
    )


def test_speech_takes_the_sound_slot_in_content_order(processor):
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "video", "path": "v.mp4"},
                {"type": "speech", "path": "s.wav"},
                {"type": "text", "text": "Hi."},
                {"type": "audio", "path": "a.wav"},
                {"type": "image", "path": "i.png"},
            ],
        }
    ]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert prompt.endswith("USER: <image>\n<speech>\n<audio>\n<video>\nHi. ASSISTANT:")


def test_system_turn_replaces_the_default_prompt(processor):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(chat, add_generation_prompt=True) == "Be brief. USER: Hi ASSISTANT:"


def test_text_pieces_match_sentencepiece(processor, sp):
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghij USER:ASSIT.,'?\n\t0123456789") + ["  ", "é", "✓", "日本"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=rng.integers(0, 30)))
        ids, _ = processor._encode_prompt(text, {}, add_bos=True)
        assert ids == [BOS] + sp.encode(text), repr(text)


def test_single_turn_with_media_is_token_exact(processor, sp, media):
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": media["image"]},
                {"type": "audio", "path": media["audio"]},
                {"type": "video", "path": media["video"]},
                {"type": "text", "text": "What is shown?"},
            ],
        }
    ]
    out = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    # official: split at the placeholders, encode each piece, keep BOS on the first only
    expected = (
        [BOS]
        + sp.encode(DEFAULT_SYSTEM_PROMPT + " USER: ")
        + [IMAGE] * N
        + sp.encode("\n")
        + [AUDIO] * N
        + sp.encode("\n")
        + [VIDEO] * N
        + sp.encode("\nWhat is shown? ASSISTANT:")
    )
    assert out["input_ids"][0].tolist() == expected
    assert out["attention_mask"][0].tolist() == [1] * len(expected)
    tokens = processor.tokenizer.convert_ids_to_tokens(expected)
    after_image = tokens.index("<image>") + N
    assert tokens[after_image : after_image + 2] == ["▁", "<0x0A>"]  # the bare dummy prefix
    assert set(out) == {
        "input_ids",
        "attention_mask",
        "pixel_values",
        "pixel_values_videos",
        "audio_input_features",
        "audio_padding_mask",
    }


def test_multi_turn_is_token_exact(processor, sp, media):
    chat = [
        {"role": "user", "content": [{"type": "speech", "path": media["speech"]}, {"type": "text", "text": "Say it."}]},
        {"role": "assistant", "content": "one two three"},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "yes"},
    ]
    ids = processor.apply_chat_template(chat, tokenize=True, return_tensors=None)[0]
    # the slow tokenizer splits at </s> and gives the next piece its own dummy prefix ("▁USER")
    expected = (
        [BOS]
        + sp.encode(DEFAULT_SYSTEM_PROMPT + " USER: ")
        + [SPEECH] * N
        + sp.encode("\nSay it. ASSISTANT: one two three")
        + [EOS]
        + sp.encode("USER: Again? ASSISTANT: yes")
        + [EOS]
    )
    assert ids == expected
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[tokens.index("</s>") + 1] == "▁USER"


def test_assistant_mask_covers_answers_and_their_eos(processor, sp):
    chat = [
        {"role": "user", "content": "Colour?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "Shape?"},
        {"role": "assistant", "content": "a circle"},
    ]
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0].tolist(), out["assistant_masks"][0].tolist()
    first = sp.encode(DEFAULT_SYSTEM_PROMPT + " USER: Colour? ASSISTANT: red")
    head = sp.encode(DEFAULT_SYSTEM_PROMPT + " USER: Colour? ASSISTANT:")
    second = sp.encode("USER: Shape? ASSISTANT: a circle")
    second_head = sp.encode("USER: Shape? ASSISTANT:")
    assert first[: len(head)] == head and second[: len(second_head)] == second_head
    assert ids == [BOS] + first + [EOS] + second + [EOS]
    expected = (
        [0] * (1 + len(head))
        + [1] * (len(first) - len(head) + 1)
        + [0] * len(second_head)
        + [1] * (len(second) - len(second_head) + 1)
    )
    assert mask == expected
    assert processor.decode([i for i, m in zip(ids, mask) if m]) == "red</s> a circle</s>"


def test_batch_of_chats_pads_right_for_training_and_left_for_generation(processor):
    chats = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "yes"}],
        [{"role": "user", "content": "A much longer question here?"}, {"role": "assistant", "content": "no"}],
    ]
    train = processor.apply_chat_template(chats, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    gen = processor.apply_chat_template(chats, tokenize=True, return_dict=True)
    short = int(train["attention_mask"][0].sum())
    width = train["input_ids"].shape[1]
    assert short < width
    assert train["attention_mask"][0].tolist() == [1] * short + [0] * (width - short)
    assert gen["attention_mask"][0].tolist() == [0] * (width - short) + [1] * short
    assert train["input_ids"][0, :short].tolist() == gen["input_ids"][0, width - short :].tolist()
    assert (train["input_ids"][0, short:] == processor.tokenizer.pad_token_id).all()
    assert train["assistant_masks"][0, short:].sum() == 0


def test_video_soundtrack_becomes_an_item(processor, media):
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "video", "path": media["video"], "soundtrack": "audio"},
                {"type": "text", "text": "?"},
            ],
        }
    ]
    assert processor.apply_chat_template(chat).endswith("USER: <audio>\n<video>\n? ")
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert out["pixel_values_videos"].shape == (1, 8, 3, 28, 28)
    assert out["audio_input_features"].shape == (1, 2998, 128)
    assert (out["input_ids"] == AUDIO).sum() == N and (out["input_ids"] == VIDEO).sum() == N
    as_speech = [{"role": "user", "content": [{"type": "video", "path": media["video"], "soundtrack": "speech"}]}]
    speech = processor.apply_chat_template(as_speech, tokenize=True, return_dict=True)
    assert speech["input_features"].shape == (1, 80, 3000) and "audio_input_features" not in speech


def test_continue_final_message(processor):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, I"}]
    assert processor.apply_chat_template(chat, continue_final_message=True).endswith("ASSISTANT: Hello, I")


@pytest.mark.parametrize(
    "chat, message",
    [
        (
            [{"role": "user", "content": [{"type": "gif", "path": "x.gif"}]}],
            r"message 0, content block 0: unknown content type 'gif'",
        ),
        (
            [{"role": "user", "content": [{"type": "image"}]}],
            r"content block 0: a image block needs exactly one of the keys",
        ),
        ([{"role": "user", "content": [{"type": "image", "path": "a", "url": "b"}]}], r"exactly one of the keys"),
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [{"type": "image", "path": "x.png"}]}],
            r"message 1, content block 0: media belong to user turns",
        ),
        ([{"role": "tool", "content": "x"}], r"message 0: role 'tool'"),
        ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], r"message 1: role 'system'"),
        (
            [{"role": "user", "content": [{"type": "video", "path": "v.mp4", "soundtrack": "music"}]}],
            r"soundtrack must be 'speech' or 'audio'",
        ),
    ],
)
def test_malformed_chats_are_value_errors(processor, chat, message):
    with pytest.raises(ValueError, match=message):
        processor.apply_chat_template(chat)


def test_bad_media_in_a_chat_names_the_item(processor, media, tmp_path):
    missing = str(tmp_path / "gone.wav")
    chat = [
        {"role": "user", "content": [{"type": "speech", "path": media["speech"]}, {"type": "speech", "path": missing}]}
    ]
    with pytest.raises(ValueError, match=r"speech item 1 \(sample 0\): 'gone.wav': file not found"):
        processor.apply_chat_template(chat, tokenize=True)
