"""Hub-ready folders: what `save_pretrained` writes, what `push_to_hub` would upload (the single upload
call intercepted, no network), and a round trip through a fresh process that has only the folder.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor
from transformers.dynamic_module_utils import get_relative_import_files

import modeling_unimoe
from modeling_unimoe.hub_unimoe import CARD_MARKER, model_card
from unimoe_conversion.tiny_checkpoint import tiny_config, write_tiny_checkpoint
from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image

PACKAGE = Path(modeling_unimoe.__file__).parent
PROCESSOR_FILES = {"processor_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"}


def code_files() -> set[str]:
    """The remote code a folder needs: the model's, config's and processor's modules and what they import."""
    entries = ["modeling_unimoe.py", "configuration_unimoe.py", "processing_unimoe.py"]
    files = {PACKAGE / name for name in entries}
    for entry in entries:
        files.update(Path(f) for f in get_relative_import_files(str(PACKAGE / entry)))
    return {f.name for f in files}


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("hub") / "tiny-unimoe", max_shard_size="200KB")


def test_save_pretrained_writes_a_self_contained_hub_folder(hub_folder):
    files = {p.name for p in hub_folder.iterdir()}
    config = json.loads((hub_folder / "config.json").read_text())
    index = json.loads((hub_folder / "model.safetensors.index.json").read_text())
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    generation = json.loads((hub_folder / "generation_config.json").read_text())

    assert "pipeline_unimoe.py" in code_files() and "hub_unimoe.py" in code_files()
    assert code_files() <= files
    assert PROCESSOR_FILES | {"README.md", "generation_config.json", "tokenizer.model"} <= files
    for auto_class in ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText"):
        assert auto_class in config["auto_map"]
    assert config["custom_pipelines"] == {
        "any-to-text": {"impl": "pipeline_unimoe.AnyToTextPipeline", "pt": ["AutoModel"], "type": "multimodal"}
    }
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    assert sum(len(load_file(hub_folder / shard)) for shard in shards) == len(index["weight_map"])
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)


def test_model_card_names_modalities_experts_and_usage(hub_folder):
    card = (hub_folder / "README.md").read_text()
    model = AutoModel.from_pretrained(hub_folder)
    text_config = model.config.text_config

    assert card.startswith("---\nlibrary_name: transformers\n")  # Hub metadata opens the file
    assert CARD_MARKER in card
    assert "| inputs | text, image, video, speech, audio |" in card
    assert f"{text_config.num_experts} experts per MoE layer, top-{text_config.num_experts_per_tok}" in card
    assert f"| parameters | {model.num_parameters():,} |" in card
    assert f'pipeline("any-to-text", model="{hub_folder}", trust_remote_code=True)' in card
    assert f"unimoe-chat --model {hub_folder} --image" in card
    speech_only = model_card(tiny_config(vision=False, audio=False), model_id="me/x")
    assert "| inputs | text, speech |" in speech_only and '"type": "image"' not in speech_only


def test_save_keeps_a_card_written_by_hand(tmp_path):
    model = AutoModel.from_config(tiny_config(vision=False, speech=False, audio=False))
    (tmp_path / "README.md").write_text("# My own card\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# My own card\n"


def test_push_to_hub_uploads_exactly_the_saved_files(tmp_path, monkeypatch, hub_folder):
    model = AutoModel.from_pretrained(hub_folder)
    processor = AutoProcessor.from_pretrained(hub_folder)
    model.save_pretrained(tmp_path / "saved", max_shard_size="200KB")
    processor.save_pretrained(tmp_path / "saved")
    calls = []

    class Repo:
        repo_id = "someone/tiny-unimoe"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append((repo_id, folder_digest(Path(folder_path)), (Path(folder_path) / "README.md").read_text()))

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: Repo())
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model.push_to_hub("tiny-unimoe", processor=processor, max_shard_size="200KB")

    saved = folder_digest(tmp_path / "saved")
    ((repo_id, uploaded, card),) = calls
    assert repo_id == "someone/tiny-unimoe"
    assert set(uploaded) == set(saved)
    # Same bytes everywhere but the card, which names the repo instead of the local folder.
    assert {f for f in saved if saved[f] != uploaded[f]} == {"README.md"}
    assert 'model="someone/tiny-unimoe"' in card


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline

    folder, copy, image, speech = sys.argv[1:5]
    chat = [{"role": "user", "content": [
        {"type": "image", "path": image}, {"type": "speech", "path": speech},
        {"type": "text", "text": "What is going on?"}]}]
    pipe = pipeline("any-to-text", model=folder, trust_remote_code=True)
    answer = pipe(chat, max_new_tokens=5, return_full_text=False)[0]["generated_text"]
    pipe.save_pretrained(copy, max_shard_size="200KB")
    again = pipeline("any-to-text", model=copy, trust_remote_code=True)
    answer_again = again(chat, max_new_tokens=5, return_full_text=False)[0]["generated_text"]
    print(json.dumps({
        "answer": answer,
        "answer_again": answer_again,
        "classes": [type(p).__module__ for p in (pipe, pipe.model, pipe.processor, again)],
        "imported": sorted(m for m in ("modeling_unimoe", "torchvision", "torchcodec") if m in sys.modules),
    }))
    """
)


def test_folder_round_trips_through_a_fresh_process(tmp_path, hub_folder):
    """A process that never imports the package: the folder's own code runs the pipeline, saves
    itself again, and the copy answers the same; the copy equals the original."""
    image, speech = write_image(tmp_path / "photo.png"), write_audio(tmp_path / "question.wav", sine_wave(1.0))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(hub_folder), str(tmp_path / "copy"), str(image), str(speech)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    model = AutoModel.from_pretrained(hub_folder).eval()
    processor = AutoProcessor.from_pretrained(hub_folder)
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(image)},
                {"type": "speech", "path": str(speech)},
                {"type": "text", "text": "What is going on?"},
            ],
        }
    ]
    inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    expected = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    assert all(module.startswith("transformers_modules.") for module in report["classes"])
    assert report["imported"] == []  # no installed package, no torchvision, no torchcodec
    assert report["answer"] == report["answer_again"] == expected
    original, copy = folder_digest(hub_folder), folder_digest(tmp_path / "copy")
    assert set(copy) == set(original) - {"tokenizer.model"}  # written by the tiny writer, not save_pretrained
    changed = {name for name in copy if copy[name] != original[name]}
    assert changed <= {"README.md", "config.json", "tokenizer_config.json"}  # the card names the new folder
    for name in ("config.json", "tokenizer_config.json"):
        before, after = (_json_without_load_flags(folder / name) for folder in (hub_folder, tmp_path / "copy"))
        assert after == before, name


def _json_without_load_flags(path: Path) -> dict:
    # Loading records how it loaded: `dtype` in every (sub-)config, offline flags in the tokenizer.
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("dtype", "local_files_only", "is_local")}
        return value

    return strip(json.loads(path.read_text()))
