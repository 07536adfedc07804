"""`unimoe-chat` on a tiny checkpoint: one-shot and streamed answers equal the pipeline's, multi-turn
history, media commands, and the errors users see for bad files."""

import io

import pytest
import torch

from unimoe_processing import chat_cli
from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image

NEW_TOKENS = ["--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-media")
    broken = root / "broken.png"
    broken.write_bytes(b"not a png")
    return {
        "image": str(write_image(root / "photo.png")),
        "speech": str(write_audio(root / "question.wav", sine_wave(1.0))),
        "broken": str(broken),
    }


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return chat_cli.load_pipeline(str(tiny_checkpoint), device="cpu")


@pytest.fixture
def cached_pipeline(monkeypatch, pipe):
    """The CLI with the module's pipeline instead of loading one per test; records the load arguments."""
    loads = []

    def load(model, **kwargs):
        loads.append((model, kwargs))
        return pipe

    monkeypatch.setattr(chat_cli, "load_pipeline", load)
    return loads


def answer(pipe, chat) -> str:
    return pipe(chat, max_new_tokens=4, return_full_text=False)[0]["generated_text"]


def user(text, *blocks):
    return {"role": "user", "content": [*blocks, {"type": "text", "text": text}]}


def test_one_shot_answer_is_streamed_and_equals_the_pipeline(cached_pipeline, pipe, media, capsys, tiny_checkpoint):
    argv = ["--model", str(tiny_checkpoint), "--image", media["image"], "--speech", media["speech"], "Why?"]
    expected = answer(
        pipe, [user("Why?", {"type": "image", "path": media["image"]}, {"type": "speech", "path": media["speech"]})]
    )

    assert chat_cli.main(argv + NEW_TOKENS) == 0
    streamed = capsys.readouterr().out
    assert chat_cli.main(argv + NEW_TOKENS + ["--no-stream"]) == 0
    whole = capsys.readouterr().out

    assert streamed == whole == expected + "\n"
    assert cached_pipeline[0] == (
        str(tiny_checkpoint),
        {"device": None, "dtype": "auto", "attn_implementation": None, "trust_remote_code": False},
    )


def test_interactive_chat_keeps_the_history(cached_pipeline, pipe, media, capsys, tiny_checkpoint):
    lines = f"Hello there.\n/image {media['image']}\nAnd this?\n/reset\nHello there.\n/exit\nnever read\n"
    code = chat_cli.main(["--model", str(tiny_checkpoint), *NEW_TOKENS], stdin=io.StringIO(lines))
    out = capsys.readouterr().out

    first = answer(pipe, [user("Hello there.")])
    turn_one = [user("Hello there."), {"role": "assistant", "content": first}]
    second = answer(pipe, [*turn_one, user("And this?", {"type": "image", "path": media["image"]})])
    assert code == 0
    # After /reset the chat starts over: the same first answer again.
    assert out.split("user> ")[1:] == [
        f"assistant> {first}\n",
        "",
        f"assistant> {second}\n",
        "",
        f"assistant> {first}\n",
        "",
    ]


def test_question_then_interactive_with_system_prompt(cached_pipeline, pipe, capsys, tiny_checkpoint):
    argv = ["--model", str(tiny_checkpoint), "--system", "Be brief.", "-i", "First?", *NEW_TOKENS]
    chat_cli.main(argv, stdin=io.StringIO("Second?\n"))
    out = capsys.readouterr().out

    system = {"role": "system", "content": "Be brief."}
    first = answer(pipe, [system, user("First?")])
    second = answer(pipe, [system, user("First?"), {"role": "assistant", "content": first}, user("Second?")])
    assert out == f"assistant> {first}\nuser> assistant> {second}\nuser> "


def test_bad_file_errors(cached_pipeline, media, capsys, tiny_checkpoint):
    model = ["--model", str(tiny_checkpoint), *NEW_TOKENS]
    assert chat_cli.main([*model, "--image", media["broken"], "What?"]) == 2
    assert "error: image item 0 (sample 0): " in capsys.readouterr().err

    cached_pipeline.clear()
    assert chat_cli.main([*model, "--speech", "missing.wav", "What?"]) == 2
    assert capsys.readouterr().err == "error: --speech missing.wav: no such file\n"
    assert cached_pipeline == []  # failed before loading the model


def test_interactive_errors_drop_the_turn_not_the_chat(cached_pipeline, pipe, media, capsys, tiny_checkpoint):
    lines = f"/image {media['broken']}\nWhat?\n/video nowhere.mp4\n/frobnicate\nWhat?\n"
    chat_cli.main(["--model", str(tiny_checkpoint), *NEW_TOKENS], stdin=io.StringIO(lines))
    captured = capsys.readouterr()

    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert [e.split(":")[1].strip() for e in errors] == [
        "image item 0 (sample 0)",
        "--video nowhere.mp4",
        "unknown command '/frobnicate'; commands",
    ]
    # The failed turn left no trace: the last answer is that of a fresh "What?".
    assert captured.out.endswith(f"assistant> {answer(pipe, [user('What?')])}\nuser> ")


def test_loading_options_reach_the_model(tiny_checkpoint):
    pipe = chat_cli.load_pipeline(str(tiny_checkpoint), device="cpu", dtype="bfloat16", attn_implementation="eager")
    assert pipe.model.dtype == torch.bfloat16
    assert pipe.model.config._attn_implementation == "eager"
    assert type(pipe.model).__module__ == "modeling_unimoe.modeling_unimoe"  # the installed code
    # The checkpoint's pipeline code (its model classes too, in a process without the package).
    remote = chat_cli.load_pipeline(str(tiny_checkpoint), device="cpu", trust_remote_code=True)
    assert type(remote).__module__.startswith("transformers_modules.")


def test_unloadable_model_is_reported(tmp_path, capsys):
    assert chat_cli.main(["--model", str(tmp_path / "nothing-here"), "Hi"]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot load {tmp_path / 'nothing-here'}: ")
