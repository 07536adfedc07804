"""unimoe_trl pieces on their own: official-format data, collator, sampler, stage table,
expert hand-over, the aux loss under gradient accumulation, accelerate configs.

References: hand-written expected messages, parameter sets and sampler groups; the tokenizer's
own decoding for label spans; tensors read back from the files; the model's own CE and
load-balancing loss for the trainer's loss; accelerate's config parser.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from modeling_unimoe import UniMoeForConditionalGeneration, UniMoeProcessor
from unimoe_conversion.tiny_checkpoint import tiny_config
from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image
from unimoe_trl.collator import IGNORE_INDEX, UniMoeDataCollator
from unimoe_trl.data import SampleError, build_dataset, to_messages, tokens_per_item
from unimoe_trl.experts import (
    assemble_moe_checkpoint,
    densify_checkpoint,
    extract_mlp_expert,
    merge_lora_checkpoint,
    read_tensors,
)
from unimoe_trl.sampler import ModalityLengthGroupedSampler
from unimoe_trl.stages import apply_stage, get_stage, lora_config, trainable_parameter_names, without_projectors
from unimoe_trl.trainer import UniMoeTrainer, UniMoeTrainingArguments

CONFIGS = Path(__file__).parent.parent / "trl_scripts" / "configs"
PLACEHOLDER_IDS = (400, 401, 402, 403)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    write_image(root / "red.png", np.full((32, 32, 3), (255, 0, 0), np.uint8))
    write_image(root / "blue.png", np.full((32, 32, 3), (0, 0, 255), np.uint8))
    write_audio(root / "tone.wav", sine_wave(0.5))
    (root / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return UniMoeProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def dense_checkpoint(tiny_checkpoint, tmp_path_factory):
    return densify_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("dense"))


def image_speech_sample(image="red.png", answer="A red circle on the left."):
    return {
        "image": image,
        "voice": ["tone.wav"],
        "conversations": [
            {"from": "human", "value": "<image>\n<audio>\nWhat is in the image?"},
            {"from": "gpt", "value": answer},
        ],
    }


# ------------------------------------------------------------------------------------ data


def test_official_sample_becomes_chat_messages(tmp_path):
    sample = {
        "image": "img/a.png",
        "video": ["f0.png", "f1.png"],
        "voice": ["q.wav", "/abs/r.wav"],
        "conversations": [
            {"from": "human", "value": "<image>\nCompare <audio> with\n<audio>"},
            {"from": "gpt", "value": "Same."},
            {"from": "human", "value": "And the video? <video>"},
            {"from": "gpt", "value": "Moving."},
        ],
    }
    expected = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(tmp_path / "img/a.png")},
                {"type": "speech", "speech": str(tmp_path / "q.wav")},
                {"type": "speech", "speech": "/abs/r.wav"},
                {"type": "text", "text": "Compare with"},
            ],
        },
        {"role": "assistant", "content": "Same."},
        {
            "role": "user",
            "content": [
                {"type": "video", "video": [str(tmp_path / "f0.png"), str(tmp_path / "f1.png")]},
                {"type": "text", "text": "And the video?"},
            ],
        },
        {"role": "assistant", "content": "Moving."},
    ]
    assert to_messages(sample, "speech", tmp_path) == expected
    as_audio = to_messages(sample, "audio", tmp_path)
    assert [block["type"] for block in as_audio[0]["content"]] == ["image", "audio", "audio", "text"]


@pytest.mark.parametrize(
    "sample, message",
    [
        (
            {"image": "a.png", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
            "0 image",
        ),
        ({"conversations": [{"from": "human", "value": "<image> Hi"}, {"from": "gpt", "value": "Yo"}]}, "1 image"),
        ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "<image>"}]}, "gpt turn"),
        ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Yo"}]}, "alternate"),
        ({"conversations": [{"from": "human", "value": "Hi"}]}, "gpt answer"),
    ],
)
def test_malformed_samples_name_the_problem(sample, message):
    with pytest.raises(SampleError, match=message):
        to_messages(sample)


def test_build_dataset_drops_invalid_samples_with_their_index(tmp_path, media, processor):
    samples = [
        image_speech_sample(),
        {"conversations": [{"from": "human", "value": "<image> Hi"}, {"from": "gpt", "value": "Yo"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(samples))
    dataset, report = build_dataset(str(path), tokens_per_item=tokens_per_item(processor))
    assert dataset["sample_index"] == [0, 2]
    assert dataset["modality"] == ["image+speech", "text"]
    assert report.invalid == [(1, "1 image placeholder(s) in the human turns but 0 item(s) in 'image'")]
    assert report.media_dir == tmp_path
    assert dataset["image"] == [str(tmp_path / "red.png"), None]  # relative paths made absolute
    assert dataset["voice"] == [[str(tmp_path / "tone.wav")], None]
    # words + image tokens (4) + one speech chunk (5)
    assert dataset["length"] == [
        len("<image>\n<audio>\nWhat is in the image? A red circle on the left.".split()) + 9,
        2,
    ]


def test_any_datasets_dataset_with_image_features(tmp_path, media, processor):
    from datasets import Dataset, Image

    table = Dataset.from_dict(
        {
            "image": [str(media / "red.png")],
            "conversations": [[{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]],
        }
    ).cast_column("image", Image())
    table.save_to_disk(str(tmp_path / "saved"))
    dataset, report = build_dataset(str(tmp_path / "saved"), tokens_per_item=tokens_per_item(processor))
    assert report.kept == 1 and dataset[0]["image"]["bytes"] is not None  # read undecoded
    batch = UniMoeDataCollator(processor, 512)([dataset[0]])
    direct = processor(text="<image>", images=[str(media / "red.png")])
    torch.testing.assert_close(batch["pixel_values"], direct["pixel_values"])


# -------------------------------------------------------------------------------- collator


def labelled_runs(labels: torch.Tensor) -> list[list[int]]:
    runs, current = [], []
    for value in labels.tolist():
        if value == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(value)
    return runs + ([current] if current else [])


def test_labels_cover_exactly_the_answers(media, processor):
    sample = image_speech_sample()
    sample["conversations"] += [
        {"from": "human", "value": "And the sound?"},
        {"from": "gpt", "value": "A high tone."},
    ]
    sample["sample_index"] = 7
    batch = UniMoeDataCollator(processor, 512, media_dir=media)([sample])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    runs = labelled_runs(labels)
    decoded = [processor.tokenizer.decode(run, skip_special_tokens=True).strip() for run in runs]
    assert decoded == ["A red circle on the left.", "A high tone."]
    assert all(run[-1] == processor.tokenizer.eos_token_id for run in runs)
    assert not torch.isin(labels, torch.tensor(PLACEHOLDER_IDS)).any()
    assert (ids == 400).sum() == 4 and (ids == 402).sum() == 5  # one image, one 30-s speech chunk
    assert batch["pixel_values"].shape[0] == 1 and batch["input_features"].shape[0] == 1
    assert batch["skipped"].tolist() == [0, 0, 0]


def test_bad_media_and_overlong_samples_are_skipped_and_counted(media, processor, caplog):
    good = {**image_speech_sample(), "sample_index": 0}
    broken = {**image_speech_sample(image="broken.png"), "sample_index": 1}
    long_text = " ".join(["colour shape count"] * 80)
    overlong = {**image_speech_sample(answer=long_text), "sample_index": 2}
    collator = UniMoeDataCollator(processor, 200, media_dir=media)
    with caplog.at_level("WARNING"):
        batch = collator([good, broken, overlong])
    assert batch["input_ids"].shape[0] == 1
    assert batch["skipped"].tolist() == [1, 1, 0]  # overlong, bad_media, invalid
    assert "Skipping sample 1 (bad_media)" in caplog.text and "broken.png" in caplog.text
    assert "Skipping sample 2 (overlong)" in caplog.text
    # The kept row is the good sample, whole: its media rows match its placeholders.
    assert (batch["input_ids"][0] == 400).sum() == batch["pixel_values"].shape[0] * 4

    empty = collator([broken])
    assert empty["labels"].eq(IGNORE_INDEX).all() and "pixel_values" not in empty


def test_batch_media_follow_sample_order(media, processor):
    red, blue = image_speech_sample(), image_speech_sample(image="blue.png")
    batch = UniMoeDataCollator(processor, 512, media_dir=media)([red, blue])
    first, second = (
        processor(text="<image>", images=[str(media / n)])["pixel_values"] for n in ("red.png", "blue.png")
    )
    torch.testing.assert_close(batch["pixel_values"], torch.cat([first, second]))
    # Right padding: each row is its tokens, then padding without attention or targets.
    for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()


# --------------------------------------------------------------------------------- sampler


def test_modality_sampler_groups_one_modality_sorted_by_length():
    modalities = ["image"] * 5 + ["speech"] * 3 + ["text"] * 2
    lengths = [10, 50, 20, 40, 30, 7, 9, 8, 1, 2]
    sampler = ModalityLengthGroupedSampler(modalities, lengths, group_size=2, seed=3)
    groups = sampler.groups()
    assert len(sampler) == 6 + 4 + 2 == sum(len(g) for g in groups)
    for group in groups:
        assert len(group) == 2 and len({modalities[i] for i in group}) == 1
        assert [lengths[i] for i in group] == sorted((lengths[i] for i in group), reverse=True)
    assert set(list(sampler)) == set(range(10))
    assert list(sampler) == list(sampler)  # same epoch, same order
    sampler.set_epoch(1)
    assert sampler.groups() != groups


# ----------------------------------------------------------------------------- stage table


def test_stage1_trains_exactly_the_connectors():
    model = UniMoeForConditionalGeneration(tiny_config())
    apply_stage(model, "stage1")
    connectors = ("model.mm_projector.", "model.speech_aligner.", "model.speech_projector.")
    connectors += ("model.audio_aligner.", "model.audio_projector.")
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.startswith(connectors) and not name.startswith("model.speech_aligner.decoder.embed_tokens.")
    }
    assert "model.speech_aligner.query_tokens" in expected and "model.audio_aligner.query_tokens" in expected
    assert set(trainable_parameter_names(model)) == expected


def test_stage2_trains_exactly_the_dense_mlps():
    model = UniMoeForConditionalGeneration(tiny_config(moe_layers=[]))
    apply_stage(model, "stage2")
    expected = {f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")}
    assert set(trainable_parameter_names(model)) == expected


@pytest.mark.parametrize("train_projectors", [True, False])
def test_stage3_trains_lora_routers_and_projectors(train_projectors):
    from peft import get_peft_model

    base = UniMoeForConditionalGeneration(tiny_config())
    stage = get_stage("stage3") if train_projectors else without_projectors(get_stage("stage3"))
    model = get_peft_model(base, lora_config(base, stage))
    prefix = "base_model.model.model."
    expected = set()
    for layer in range(2):
        targets = [f"self_attn.{p}_proj" for p in "qkvo"]
        targets += [f"mlp.experts.{e}.{p}" for e in range(4) for p in ("gate_proj", "up_proj", "down_proj")]
        expected |= {f"{prefix}layers.{layer}.{t}.lora_{ab}.default.weight" for t in targets for ab in "AB"}
        expected.add(f"{prefix}layers.{layer}.mlp.gate.modules_to_save.default.weight")
    if train_projectors:
        for projector in ("mm_projector.0", "mm_projector.2", "speech_projector", "audio_projector"):
            expected |= {f"{prefix}{projector}.modules_to_save.default.{p}" for p in ("weight", "bias")}
    else:
        assert "projectors frozen" in stage.description and "projectors full" not in stage.description
    assert set(trainable_parameter_names(model)) == expected
    config = lora_config(base, stage)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.05)


# ------------------------------------------------------------------------------ hand-over


def test_experts_assemble_into_moe_layers(dense_checkpoint, tmp_path):
    dense = read_tensors(dense_checkpoint)
    files = []
    for k in range(2):  # two "stage-2 runs": the dense MLPs shifted by k + 1
        tensors = {
            key: value + (k + 1) for key, value in dense.items() if re.fullmatch(r".*\.mlp\.\w+_proj\.weight", key)
        }
        save_file(tensors, str(tmp_path / f"e{k}.safetensors"))
        files.append(tmp_path / f"e{k}.safetensors")
    out = assemble_moe_checkpoint(dense_checkpoint, [files[0], files[1], files[0]], tmp_path / "moe", moe_layers="even")
    model, info = UniMoeForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())
    assert model.config.text_config.moe_layer_indices == [0] and model.config.text_config.num_experts == 3
    for k, shift in enumerate((1, 2, 1)):  # expert k <- file k
        weight = model.model.layers[0].mlp.experts[k].down_proj.weight
        torch.testing.assert_close(weight, dense["model.layers.0.mlp.down_proj.weight"] + shift, rtol=0, atol=0)
    torch.testing.assert_close(model.model.layers[1].mlp.up_proj.weight, dense["model.layers.1.mlp.up_proj.weight"])
    router = model.model.layers[0].mlp.gate.weight
    assert router.shape == (3, 32) and 0.005 < router.std() < 0.05  # N(0, 0.02)
    assert json.loads((out / "unimoe_experts.json").read_text())["experts"][1] == str(files[1])

    bad = tmp_path / "bad.safetensors"
    save_file({"model.layers.1.mlp.up_proj.weight": torch.zeros(64, 32)}, str(bad))
    with pytest.raises(ValueError, match="has no model.layers.0.mlp.gate_proj.weight"):
        assemble_moe_checkpoint(dense_checkpoint, [bad, bad], tmp_path / "moe2")
    with pytest.raises(ValueError, match="num_experts_per_tok"):  # top-2 of one expert
        assemble_moe_checkpoint(dense_checkpoint, [files[0]], tmp_path / "moe3")


def test_given_router_weights_replace_the_random_draw(dense_checkpoint, tmp_path):
    dense = read_tensors(dense_checkpoint)
    expert = tmp_path / "e.safetensors"
    save_file({k: v for k, v in dense.items() if re.fullmatch(r".*\.mlp\.\w+_proj\.weight", k)}, str(expert))
    routers = {"model.layers.0.mlp.gate.weight": torch.arange(64.0).reshape(2, 32)}
    out = assemble_moe_checkpoint(dense_checkpoint, [expert, expert], tmp_path / "moe", moe_layers=[0], routers=routers)
    model = UniMoeForConditionalGeneration.from_pretrained(out)
    torch.testing.assert_close(model.model.layers[0].mlp.gate.weight.detach(), routers["model.layers.0.mlp.gate.weight"])
    with pytest.raises(ValueError, match=r"router init model.layers.0.mlp.gate.weight: expected shape \(2, 32\), got \(3, 32\)"):
        bad = {"model.layers.0.mlp.gate.weight": torch.zeros(3, 32)}
        assemble_moe_checkpoint(dense_checkpoint, [expert, expert], tmp_path / "m2", moe_layers=[0], routers=bad)
    with pytest.raises(ValueError, match="got missing"):
        assemble_moe_checkpoint(dense_checkpoint, [expert, expert], tmp_path / "m3", moe_layers="all", routers=routers)


def test_extract_expert_needs_a_dense_checkpoint(tiny_checkpoint, dense_checkpoint, tmp_path):
    path = extract_mlp_expert(dense_checkpoint, tmp_path / "e.safetensors", {"modality": "image"})
    assert sorted(load_file(str(path))) == sorted(
        f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("down_proj", "gate_proj", "up_proj")
    )
    with pytest.raises(ValueError, match="no dense MLP"):
        extract_mlp_expert(tiny_checkpoint, tmp_path / "x.safetensors")


def test_merged_adapter_equals_base_plus_lora(tiny_checkpoint, tmp_path):
    from peft import get_peft_model

    model = UniMoeForConditionalGeneration.from_pretrained(tiny_checkpoint)
    peft_model = get_peft_model(model, lora_config(model))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(0.01 * torch.randn_like(param))
    peft_model.save_pretrained(tmp_path / "adapter")
    lora = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    merged = UniMoeForConditionalGeneration.from_pretrained(
        merge_lora_checkpoint(tiny_checkpoint, tmp_path / "adapter", tmp_path / "m")
    )
    base = UniMoeForConditionalGeneration.from_pretrained(tiny_checkpoint)
    key = "base_model.model.model.layers.1.mlp.experts.3.down_proj"
    delta = lora[f"{key}.lora_B.weight"] @ lora[f"{key}.lora_A.weight"] * (16 / 8)
    torch.testing.assert_close(
        merged.model.layers[1].mlp.experts[3].down_proj.weight,
        base.model.layers[1].mlp.experts[3].down_proj.weight + delta,
    )
    torch.testing.assert_close(
        merged.model.layers[0].mlp.gate.weight, lora["base_model.model.model.layers.0.mlp.gate.weight"]
    )
    torch.testing.assert_close(
        merged.model.vision_tower.embeddings.patch_embedding.weight,
        base.model.vision_tower.embeddings.patch_embedding.weight,
    )


# --------------------------------------------------------------------------------- aux loss


def test_aux_loss_is_not_multiplied_by_gradient_accumulation(tmp_path):
    model = UniMoeForConditionalGeneration(tiny_config(vision=False, speech=False, audio=False))
    args = UniMoeTrainingArguments(output_dir=str(tmp_path), router_aux_loss_coef=0.5, use_cpu=True, report_to="none")
    trainer = UniMoeTrainer(model=model, args=args)
    model.train()
    input_ids = torch.randint(3, 400, (2, 12))
    labels = input_ids.clone()
    labels[:, :5] = IGNORE_INDEX
    labels[1, -3:] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    targets = int((labels[:, 1:] != IGNORE_INDEX).sum())

    outputs = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_router_logits=True)
    ce = F.cross_entropy(outputs.logits[:, :-1].reshape(-1, 400), labels[:, 1:].reshape(-1), reduction="sum") / targets
    reference = ce + 0.5 * outputs.aux_loss

    trainer.current_gradient_accumulation_steps = 1
    whole = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(targets))
    torch.testing.assert_close(whole, reference)
    # The same micro-batch twice under GA 2: the accumulated loss (what backward sees) is unchanged.
    trainer.current_gradient_accumulation_steps = 2
    halves = [trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(2 * targets)) for _ in range(2)]
    torch.testing.assert_close(sum(halves), reference)
    # Logged apart: LM loss and unweighted aux loss, per optimizer step.
    # (Two optimizer steps' worth were accumulated: the GA-1 step and the GA-2 step.)
    torch.testing.assert_close(trainer._logged["lm_loss"], 2 * ce.detach())
    torch.testing.assert_close(trainer._logged["aux_loss"], 2 * outputs.aux_loss.detach())
    torch.testing.assert_close(trainer._logged["steps"], torch.tensor(2.0))


# ---------------------------------------------------------------------------- accelerate


@pytest.mark.parametrize(
    "name, kind",
    [("ddp.yaml", "MULTI_GPU"), ("fsdp2.yaml", "FSDP"), ("zero2.yaml", "DEEPSPEED"), ("zero3.yaml", "DEEPSPEED")],
)
def test_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(CONFIGS / name))
    assert config.distributed_type.value == kind
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
        model = UniMoeForConditionalGeneration(tiny_config())
        classes = {type(module).__name__ for module in model.modules()}
        assert set(config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")) <= classes
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[4])
