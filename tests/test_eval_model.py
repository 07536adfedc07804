"""The harness on a real (tiny, random) Uni-MoE checkpoint: the bundled synthetic task in
miniature. A random model answers nonsense; what is checked is the mechanics: batched
generation equals per-sample generation through the chat-template path, JSONL, resume, the
printed Table-9 layout."""

import json

import pytest
import torch

from unimoe_evaluation.cli import main
from unimoe_evaluation.data import load_eval_json
from unimoe_evaluation.generation import GenerationSettings, HFGenerator
from unimoe_evaluation.report import PAPER_COLUMNS
from unimoe_evaluation.tasks import get_task
from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image, write_video

QUESTION = "What colour is it?"
SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def synthetic_task(tmp_path_factory):
    """An official-format eval JSON over synthetic media: image, image + speech, video, text."""
    root = tmp_path_factory.mktemp("synthetic-eval")
    write_image(root / "red.png")
    write_audio(root / "tone.wav", sine_wave(440, 1.0))
    write_video(root / "clip.mp4", num_frames=8)
    human = [f"<image>\n{QUESTION}{SUFFIX}", f"<image>\n<audio>\n{QUESTION}", "<video>\nWhat moves?", "Say yes."]
    media = [{"image": "red.png"}, {"image": "red.png", "voice": ["tone.wav"]}, {"video": "clip.mp4"}, {}]
    items = [
        {"question_id": i, **m, "gt": ["red"] * 10, "conversations": [{"from": "human", "value": h}]}
        for i, (h, m) in enumerate(zip(human, media))
    ]
    (root / "synthetic.json").write_text(json.dumps(items))
    return root


@pytest.fixture(scope="module")
def generator(tiny_checkpoint):
    return HFGenerator(str(tiny_checkpoint), device="cpu", dtype="float32").load()


def _reference(generator, content, settings):
    """One sample through `apply_chat_template` with typed content blocks: the next-token
    logits and the generated answer."""
    inputs = generator.processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    logits = generator.model(**inputs).logits[0, -1]
    output = generator.model.generate(**inputs, **settings.generate_kwargs())
    answer = generator.processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return logits, answer.strip()


def test_batched_generation_matches_chat_template_path(synthetic_task, generator):
    samples = load_eval_json(synthetic_task / "synthetic.json", get_task("okvqa"))
    settings = GenerationSettings(max_new_tokens=4)
    batched = generator(samples, settings)
    with torch.inference_mode():
        batched_logits = generator.model(**generator.inputs(samples)).logits[:, -1]
    text = {"type": "text", "text": QUESTION + SUFFIX}
    image = {"type": "image", "path": str(synthetic_task / "red.png")}
    contents = [
        [image, text],
        [image, {"type": "speech", "path": str(synthetic_task / "tone.wav")}, text],
        [{"type": "video", "path": str(synthetic_task / "clip.mp4")}, {"type": "text", "text": "What moves?" + SUFFIX}],
        [{"type": "text", "text": "Say yes." + SUFFIX}],
    ]
    with torch.inference_mode():
        logits, answers = zip(*(_reference(generator, c, settings) for c in contents))
    # Left padding and per-sample media must not change any sample's logits; the random
    # model's logits differ between the samples, so a mix-up of media would show.
    torch.testing.assert_close(batched_logits, torch.stack(logits), atol=1e-5, rtol=1e-4)
    assert all((logits[i] - logits[j]).abs().max() > 1e-3 for i in range(4) for j in range(i + 1, 4))
    assert batched == list(answers)
    assert generator.prompts(samples[:1])[0].endswith(f"USER: <image>\n{QUESTION}{SUFFIX} ASSISTANT:")


def test_cli_run_resume_and_table(synthetic_task, tiny_checkpoint, tmp_path, capsys):
    args = ["run", "--model", str(tiny_checkpoint), "--task", "okvqa", "--data", str(synthetic_task / "synthetic.json")]
    args += [
        "--output",
        str(tmp_path),
        "--batch-size",
        "3",
        "--max-new-tokens",
        "3",
        "--device",
        "cpu",
        "--name",
        "tiny",
    ]
    main([*args, "--limit", "2"])
    first = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in first] == ["0", "1"]
    capsys.readouterr()
    main(args)  # resumes: the two saved predictions stay as they are, two more are added
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert lines[:2] == first and len(lines) == 4
    out = capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert (scores["task"], scores["n"], scores["n_unscored"]) == ("okvqa", 4, 0)
    assert 0.0 <= scores["score"] <= 100.0
    header = next(line for line in out.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["model", *PAPER_COLUMNS]
    ours = next(line for line in out.splitlines() if line.startswith("| tiny"))
    assert ours.split("|")[3].strip() == f"{scores['score']:.2f}"  # the OK column
