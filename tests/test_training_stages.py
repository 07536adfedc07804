"""The three stage scripts end to end on the tiny model, offline, from the command line.

    dense tiny checkpoint ─► stage1 (accelerate launch, YAML config) ─► stage2 image (python script)
                                                                    └► stage2 speech (main() from Python)
                          stage3 (torchrun, 2 CPU processes, experts [image, speech, image, speech])
                          ─► base (assembled MoE) + adapter + merged (AutoModel, trust_remote_code)

Each CLI run trains 3 steps on a batch that repeats (the dataset is one batch), so its loss
must go down; weights outside the stage's table must come out bit-identical. References: the
saved tensors of the run's input, a one-process run with the doubled batch, an uninterrupted
run for resuming.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modeling_unimoe import UniMoeForConditionalGeneration
from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image
from unimoe_trl import stage2, stage3
from unimoe_trl.arguments import (
    ModelArguments,
    Stage2Arguments,
    Stage3Arguments,
    UniMoeScriptArguments,
    UniMoeTrainingArguments,
)
from unimoe_trl.experts import densify_checkpoint, read_tensors

REPO = Path(__file__).parent.parent
SCRIPTS = REPO / "trl_scripts"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
QUICK = ["--max_steps", "3", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none"]
CONNECTORS = ("model.mm_projector.", "model.speech_aligner.", "model.speech_projector.")
CONNECTORS += ("model.audio_aligner.", "model.audio_projector.")


def conversation(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_image(root / "red.png", np.full((32, 32, 3), (255, 0, 0), np.uint8))
    write_image(root / "blue.png", np.full((32, 32, 3), (0, 0, 255), np.uint8))
    write_audio(root / "tone.wav", sine_wave(0.5))
    sets = {
        "pair": [
            {
                "image": "red.png",
                "voice": ["tone.wav"],
                **{
                    "conversations": conversation(
                        "<image>\n<audio>\nWhat is in the image?", "A red circle on the left."
                    )
                },
            },
            {
                "image": "blue.png",
                "voice": ["tone.wav"],
                "conversations": conversation("<audio>\nWhat colour?\n<image>", "The blue square moves up."),
            },
        ],
        "image": [
            {"image": "red.png", "conversations": conversation("<image>\nWhat colour?", "Red.")},
            {"image": "blue.png", "conversations": conversation("<image>\nDescribe it.", "A blue square.")},
        ],
        "speech": [
            {
                "voice": ["tone.wav"],
                "conversations": conversation("<audio>\nWhat does the speaker say?", "one two three"),
            },
            {"voice": ["tone.wav"], "conversations": conversation("What sound is this?\n<audio>", "A high tone.")},
        ],
        "mixed": [
            {
                "image": "red.png",
                "voice": ["tone.wav"],
                "conversations": conversation("<image>\n<audio>\nWhat?", "A red circle."),
            },
            {"image": "blue.png", "conversations": conversation("<image>\nColour?", "Blue.")},
            {"voice": ["tone.wav"], "conversations": conversation("<audio>\nSound?", "A tone.")},
            {"conversations": conversation("Count to three.", "one two three")},
        ],
    }
    for name, samples in sets.items():
        (root / f"{name}.json").write_text(json.dumps(samples))
    return root


@pytest.fixture(scope="module")
def dense(tiny_checkpoint, tmp_path_factory):
    return densify_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("dense"))


def run_cli(args: list[str], tmp: Path) -> None:
    result = subprocess.run(args, cwd=REPO, env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=600)
    (tmp / "log.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]


def accelerate_launch(script: str, args: list[str], tmp: Path) -> None:
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    run_cli([*launcher, str(SCRIPTS / script), *args], tmp)


def python(script: str, args: list[str], tmp: Path) -> None:
    run_cli([sys.executable, str(SCRIPTS / script), *args], tmp)


def torchrun(script: str, args: list[str], tmp: Path, processes: int = 2) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={port}"]
    run_cli([*launcher, str(SCRIPTS / script), "--use_cpu", *args], tmp)


def logged(output_dir: Path) -> list[dict]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


def changed_keys(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    assert before.keys() == after.keys()
    return {key for key in before if not torch.equal(before[key], after[key])}


@pytest.fixture(scope="module")
def stage1_out(dense, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    config = out / "stage1.yaml"
    config.write_text(
        f"model_name_or_path: {dense}\ndataset_name: {data / 'pair.json'}\noutput_dir: {out}\n"
        "per_device_train_batch_size: 2\nlearning_rate: 0.02\nactivation_checkpointing: true\n"
    )
    accelerate_launch("stage1.py", ["--config", str(config), *QUICK], out)
    return out


@pytest.fixture(scope="module")
def stage2_outs(stage1_out, data, tmp_path_factory):
    image = tmp_path_factory.mktemp("stage2-image")
    args = ["--model_name_or_path", str(stage1_out), "--dataset_name", str(data / "image.json")]
    args += ["--output_dir", str(image), "--per_device_train_batch_size", "2", "--learning_rate", "0.02"]
    python("stage2.py", [*args, "--use_cpu", "--modality", "image", *QUICK], image)

    speech = tmp_path_factory.mktemp("stage2-speech")
    result = stage2.main(
        UniMoeScriptArguments(dataset_name=str(data / "speech.json")),
        UniMoeTrainingArguments(
            output_dir=str(speech),
            per_device_train_batch_size=2,
            learning_rate=0.02,
            max_steps=3,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
        ),
        ModelArguments(model_name_or_path=str(stage1_out)),
        Stage2Arguments(modality="speech"),
    )
    assert result.files["expert"] == speech / "mlp_expert.safetensors" and len(result.losses) == 3
    return {"image": image, "speech": speech}


@pytest.fixture(scope="module")
def stage3_out(stage1_out, stage2_outs, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage3")
    experts = [str(stage2_outs[m]) for m in ("image", "speech", "image", "speech")]
    args = ["--model_name_or_path", str(stage1_out), "--expert_files", *experts]
    args += ["--dataset_name", str(data / "pair.json"), "--output_dir", str(out), "--per_device_train_batch_size", "1"]
    args += ["--learning_rate", "0.02", "--lora_dropout", "0", "--group_by_modality_length", *QUICK]
    torchrun("stage3.py", args, out)
    return out


def test_stage1_cli_trains_only_the_connectors(dense, stage1_out):
    losses = [entry["loss"] for entry in logged(stage1_out)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    changed = changed_keys(read_tensors(dense), read_tensors(stage1_out))
    assert changed and all(key.startswith(CONNECTORS) for key in changed)
    assert any(key.startswith("model.mm_projector.") for key in changed)
    assert any(key.startswith("model.speech_aligner.") for key in changed)


def test_stage2_cli_trains_only_the_mlps_and_writes_the_expert(stage1_out, stage2_outs):
    image = stage2_outs["image"]
    losses = [entry["loss"] for entry in logged(image)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    trained = read_tensors(image)
    mlps = {f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")}
    assert changed_keys(read_tensors(stage1_out), trained) == mlps
    expert = load_file(str(image / "mlp_expert.safetensors"))
    assert expert.keys() == mlps and all(torch.equal(expert[key], trained[key]) for key in mlps)


def test_stage3_builds_the_moe_from_the_experts_and_merges(stage2_outs, stage3_out):
    from transformers import AutoModel

    losses = [entry["loss"] for entry in logged(stage3_out)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all("lm_loss" in entry and "skipped_bad_media" in entry for entry in logged(stage3_out))

    base = UniMoeForConditionalGeneration.from_pretrained(stage3_out / "base")
    for k, modality in enumerate(("image", "speech", "image", "speech")):  # expert k <- file k
        expert = load_file(str(stage2_outs[modality] / "mlp_expert.safetensors"))
        for layer in range(2):
            torch.testing.assert_close(
                base.model.layers[layer].mlp.experts[k].up_proj.weight,
                expert[f"model.layers.{layer}.mlp.up_proj.weight"],
                rtol=0,
                atol=0,
            )

    merged = AutoModel.from_pretrained(stage3_out / "merged", trust_remote_code=True)
    assert (stage3_out / "merged" / "modeling_unimoe.py").is_file()
    assert (stage3_out / "adapter_model.safetensors").is_file()
    before, after = base.state_dict(), merged.state_dict()
    # LoRA targets, routers and projectors moved; towers, aligners, embeddings, norms did not.
    moved = {key for key in before if not torch.equal(before[key], after[key])}
    assert (
        "model.layers.0.self_attn.q_proj.weight" in moved and "model.layers.1.mlp.experts.3.down_proj.weight" in moved
    )
    assert "model.layers.0.mlp.gate.weight" in moved and "model.mm_projector.0.weight" in moved
    lora_or_full = (".self_attn.", ".mlp.experts.", ".mlp.gate.", "model.mm_projector.", "model.speech_projector.")
    assert all(any(part in key for part in lora_or_full) for key in moved)


def test_two_processes_match_one_process_with_the_doubled_batch(data, stage3_out, tmp_path):
    one = stage3.main(
        UniMoeScriptArguments(dataset_name=str(data / "pair.json")),
        UniMoeTrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=2,
            learning_rate=0.02,
            max_steps=3,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            group_by_modality_length=True,
            use_cpu=True,
        ),
        ModelArguments(model_name_or_path=str(stage3_out / "base")),
        Stage3Arguments(lora_dropout=0.0, merge=False),
    )
    two = logged(stage3_out)
    torch.testing.assert_close(torch.tensor(one.losses), torch.tensor([e["loss"] for e in two]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor([e["grad_norm"] for e in one.log_history if "loss" in e]),
        torch.tensor([e["grad_norm"] for e in two]),
        rtol=1e-4,
        atol=1e-6,
    )


def stage3_args(data: Path, output_dir: Path, **overrides) -> UniMoeTrainingArguments:
    return UniMoeTrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=1, gradient_accumulation_steps=2, learning_rate=0.01,
        max_steps=3, logging_steps=1, save_steps=2, report_to="none", group_by_modality_length=True,
        router_aux_loss_coef=0.01, use_cpu=True, **overrides,
    )  # fmt: skip


def test_resume_gives_the_losses_of_an_uninterrupted_run(tiny_checkpoint, data, tmp_path):
    script = UniMoeScriptArguments(dataset_name=str(data / "mixed.json"))
    model = ModelArguments(model_name_or_path=str(tiny_checkpoint))
    lora = Stage3Arguments(merge=False)  # LoRA dropout on: the RNG state must come back too
    whole = stage3.main(script, stage3_args(data, tmp_path / "whole"), model, lora)
    resumed = stage3.main(
        script,
        stage3_args(data, tmp_path / "resumed", resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2")),
        model,
        lora,
    )
    # The resumed history starts with the checkpoint's (steps 1-2); step 3 is new.
    assert [e["step"] for e in resumed.log_history if "loss" in e] == [1, 2, 3]
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(whole.losses), rtol=1e-6, atol=1e-7)
    for key in ("lm_loss", "aux_loss"):
        assert [e[key] for e in resumed.log_history if "loss" in e] == pytest.approx(
            [e[key] for e in whole.log_history if "loss" in e], abs=1e-5
        )
    for entry in (e for e in resumed.log_history if "loss" in e):  # loss = LM + 0.01 × aux, logged apart
        assert entry["aux_loss"] > 0
        assert entry["loss"] == pytest.approx(entry["lm_loss"] + 0.01 * entry["aux_loss"], abs=1e-5)


def test_stages_refuse_the_wrong_model_kind(tiny_checkpoint, dense, data, tmp_path):
    script = UniMoeScriptArguments(dataset_name=str(data / "image.json"))
    args = UniMoeTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="Stage 2 trains the dense MLPs"):
        stage2.main(script, args, ModelArguments(model_name_or_path=str(tiny_checkpoint)))
    with pytest.raises(ValueError, match="has no MoE layer"):
        stage3.main(script, args, ModelArguments(model_name_or_path=str(dense)))
    no_speech = tmp_path / "no-speech"
    model = UniMoeForConditionalGeneration.from_pretrained(tiny_checkpoint)
    model.config.speech_config = None
    model.save_pretrained(no_speech)
    speech = UniMoeScriptArguments(dataset_name=str(data / "speech.json"))
    with pytest.raises(ValueError, match="speech samples but the checkpoint has no encoder"):
        stage3.main(
            speech, args, ModelArguments(model_name_or_path=str(no_speech), processor_name_or_path=str(tiny_checkpoint))
        )
