"""The demo's synthetic task: determinism, real media, the official format, labels, text twins."""

import hashlib
import json

import numpy as np
import pytest
import torch

from modeling_unimoe.media_unimoe import load_audio, load_image, load_video
from unimoe_demo.pretrain import EDGE_SECONDS, _frame_labels
from unimoe_demo.synthetic_task import (
    COLOURS,
    FORMANTS,
    LOUDNESS,
    SHAPES,
    WORDS,
    TaskSizes,
    generate_task,
    play_bursts,
    speak_words,
    text_twin,
)
from unimoe_trl.collator import IGNORE_INDEX
from unimoe_trl.data import SampleError, build_dataset, sample_modality, to_messages

TINY = TaskSizes(caption=3, instruct=4, stage3=2, mixed=3, test=2)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return generate_task(tmp_path_factory.mktemp("task"), seed=3, sizes=TINY)


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


def test_same_seed_writes_the_same_files(task, tmp_path):
    again = generate_task(tmp_path / "again", seed=3, sizes=TINY)
    assert _digest(again.root) == _digest(task.root)
    other = generate_task(tmp_path / "other", seed=4, sizes=TINY)
    assert _digest(other.root) != _digest(task.root)


def test_splits_have_the_promised_items(task):
    stage1 = json.loads(task.stage1.read_text())
    assert len(stage1) == 2 * 4 * TINY.caption and {r["question_type"] for r in stage1} == {"caption", "slots"}
    for modality, path in task.stage2.items():
        records = json.loads(path.read_text())
        assert len(records) == TINY.instruct and {r["modality"] for r in records} == {modality}
    stage3 = json.loads(task.stage3.read_text())
    assert len(stage3) == 4 * TINY.stage3 + TINY.mixed
    test = json.loads(task.test.read_text())
    assert sorted(r["modality"] for r in test) == sorted(["image", "video", "speech", "audio", "mixed"] * TINY.test)


def test_held_out_media_are_never_trained_on(task):
    def media(records):
        return {p for r in records for key in ("image", "video", "voice") for p in np.atleast_1d(r.get(key, []))}

    train = json.loads(task.stage1.read_text()) + json.loads(task.stage3.read_text())
    for path in task.stage2.values():
        train += json.loads(path.read_text())
    test = json.loads(task.test.read_text())
    assert media(test) and not media(test) & media(train)
    assert not media(test) & set(json.loads(task.media_labels.read_text()))


def test_every_split_is_valid_official_data(task):
    for path in [task.stage1, *task.stage2.values(), task.stage3, task.test]:
        dataset, report = build_dataset(str(path), voice_modality="placeholder")
        assert report.kept == report.total == len(json.loads(path.read_text())), report.summary()


def test_media_are_real_files_with_the_drawn_content(task):
    labels = json.loads(task.media_labels.read_text())
    image_path, image_label = next((p, lab) for p, lab in labels.items() if lab["modality"] == "image")
    image = np.asarray(load_image(str(task.root / image_path)))
    assert image.shape == (28, 28, 3)
    # Quadrants with a shape are brighter than the dark background (its noise is at most 40).
    for quadrant, code in enumerate(image_label["quadrants"]):
        row, col = divmod(quadrant, 2)
        block = image[row * 14 : (row + 1) * 14, col * 14 : (col + 1) * 14]
        assert (block.max() > 100) == (code > 0)
    video = next(r["video"] for r in json.loads(task.stage2["video"].read_text()))
    frames = load_video(str(task.root / video), num_frames=4).frames
    assert frames.shape == (4, 28, 28, 3) and not np.array_equal(frames[0], frames[-1])
    voice = next(p for p, lab in labels.items() if lab["modality"] == "speech")
    assert load_audio(str(task.root / voice)).ndim == 1


def test_spoken_words_put_energy_at_their_formants():
    import random

    wave, onsets = speak_words(random.Random(0), ["seven"])
    start = int(onsets[0] * 16000)
    spectrum = np.abs(np.fft.rfft(wave[start : start + 3520]))
    frequencies = np.fft.rfftfreq(3520, 1 / 16000)
    top_two = sorted(frequencies[np.argsort(spectrum)[-2:]])
    f1, f2 = FORMANTS["seven"]
    assert top_two[0] == pytest.approx(f1, rel=0.03) and top_two[1] == pytest.approx(f2, rel=0.03)
    assert len(set(FORMANTS.values())) == len(WORDS)  # every word sounds different


def test_loudness_levels_are_rms_levels():
    import random

    levels = []
    for loudness in LOUDNESS:
        wave, onsets = play_bursts(random.Random(1), "noise", "C", 1, loudness)
        start = int(onsets[0] * 16000) + 400
        levels.append(np.sqrt(np.mean(wave[start : start + 1600] ** 2)))
    expected = np.array(list(LOUDNESS.values()))
    np.testing.assert_allclose(levels, expected, rtol=0.2)


def test_text_twin_replaces_placeholders_in_order():
    record = {
        "id": "x",
        "image": "a.png",
        "voice": ["b.wav"],
        "conversations": [
            {"from": "human", "value": "<image>\n<speech>\nAnswer."},
            {"from": "gpt", "value": "red"},
        ],
        "question_type": "spoken question",
    }
    twin = text_twin(record, ["one red circle", "colour"])
    assert twin["conversations"][0]["value"] == "one red circle\ncolour\nAnswer."
    assert "image" not in twin and "voice" not in twin


def test_frame_labels_mark_events_and_ignore_their_edges():
    # 10 positions of 20 ms; one event from 40 to 140 ms of class 3. With 30-ms edges only
    # position 4 ([80, 100) ms) lies inside [70, 110] ms; the other positions touching
    # [10, 170] ms are unlabelled, position 9 ([180, 200) ms) is silence.
    assert EDGE_SECONDS == 0.03
    labels = _frame_labels(10, 0.02, [(0.04, 0.1, 3)])
    expected = torch.zeros(10, dtype=torch.long)
    expected[[0, 1, 2, 3, 5, 6, 7, 8]] = IGNORE_INDEX
    expected[4] = 3
    assert torch.equal(labels, expected)


def test_placeholder_voice_modality_routes_each_file_by_its_placeholder(tmp_path):
    sample = {
        "image": "a.png",
        "voice": ["q.wav", "s.wav"],
        "conversations": [
            {"from": "human", "value": "<image>\n<speech>\nHear <audio> too"},
            {"from": "gpt", "value": "ok"},
        ],
    }
    blocks = to_messages(sample, "placeholder", tmp_path)[0]["content"]
    assert blocks[:3] == [
        {"type": "image", "image": str(tmp_path / "a.png")},
        {"type": "speech", "speech": str(tmp_path / "q.wav")},
        {"type": "audio", "audio": str(tmp_path / "s.wav")},
    ]
    assert sample_modality(sample, "placeholder") == "image+speech+audio"
    with pytest.raises(SampleError, match="voice"):
        to_messages({**sample, "voice": ["q.wav"]}, "placeholder")


def test_colours_and_shapes_have_distinct_codes():
    codes = {1 + c * len(SHAPES) + s for c in range(len(COLOURS)) for s in range(len(SHAPES))}
    assert len(codes) == len(COLOURS) * len(SHAPES) and 0 not in codes


def test_centroid_router_puts_each_centroid_on_its_own_expert():
    from unimoe_demo.router_init import centroid_router

    centroids = torch.randn(4, 16) * 3 + 5  # a shared offset, as hidden states have
    router = centroid_router(centroids, margin=2.0)
    logits = centroids @ router.T  # (centroid, expert)
    mean_logits = centroids.mean(dim=0) @ router.T
    torch.testing.assert_close(mean_logits, torch.zeros(4), atol=1e-4, rtol=0)  # no expert favoured by the mean
    torch.testing.assert_close(logits.diagonal(), torch.full((4,), 2.0))
    assert torch.equal(logits.argmax(dim=1), torch.arange(4))


def test_ridge_solution_recovers_a_linear_map_and_matches_lstsq():
    from unimoe_demo.connector_init import ridge_solution

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(200, 8, generator=generator, dtype=torch.float64) * 3 + 1
    weight, bias = torch.randn(5, 8, generator=generator, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    found_weight, found_bias = ridge_solution(inputs, inputs @ weight.T + bias, ridge=0.0)
    torch.testing.assert_close(found_weight, weight)
    torch.testing.assert_close(found_bias, bias)
    # With noise, ridge=0 is ordinary least squares with an intercept column.
    targets = inputs @ weight.T + bias + torch.randn(200, 5, generator=generator, dtype=torch.float64)
    found_weight, found_bias = ridge_solution(inputs, targets, ridge=0.0)
    design = torch.cat([inputs, torch.ones(200, 1, dtype=torch.float64)], dim=1)
    reference = torch.linalg.lstsq(design, targets).solution
    torch.testing.assert_close(torch.cat([found_weight.T, found_bias[None]]), reference)
    # Ridge shrinks the weights.
    shrunk, _ = ridge_solution(inputs, targets, ridge=1.0)
    assert shrunk.norm() < found_weight.norm()


def test_connector_warm_start_solves_ridge_regression_onto_the_slot_words(task):
    # Each record through the model's own feature path, one at a time (so media tokens and slot
    # words pair up without relying on batch order): the projector's new last layer must zero the
    # ridge objective's gradient, sum_t (output_t - slot_t) [x_t, 1] + penalty [W, 0] = 0.
    from unimoe_demo.connector_init import RIDGE, last_linear, warm_start_connectors
    from unimoe_demo.pretrain import SlotEmbedding, single_token
    from unimoe_demo.run import _dense_processor_and_model
    from unimoe_demo.synthetic_task import SINGLE_MODALITIES, slot_components
    from unimoe_trl.collator import UniMoeDataCollator

    processor, model = _dense_processor_and_model(task, seed=0)
    slots = [r for r in json.loads(task.stage1.read_text()) if r["question_type"] == "slots"]
    records = {m: [r for r in slots if r["modality"] == m] for m in SINGLE_MODALITIES}
    r2 = warm_start_connectors(model, processor, records, task.root)
    assert set(r2) == {"image+video", "speech", "audio"}

    collator = UniMoeDataCollator(processor, 512, "placeholder", task.root)
    embed = SlotEmbedding(model.get_input_embeddings(), processor.tokenizer, slot_components())
    features = {
        "image": lambda b: model.get_image_features(b["pixel_values"]),
        "video": lambda b: model.get_video_features(b["pixel_values_videos"]),
        "speech": lambda b: model.get_speech_features(b["input_features"]),
        "audio": lambda b: model.get_audio_features(b["audio_input_features"], b["audio_padding_mask"]),
    }
    per_layer = {}
    with torch.no_grad():
        for modality, rows in records.items():
            layer = last_linear(model, modality)
            for row in rows:
                captured = []
                handle = layer.register_forward_pre_hook(lambda module, args, into=captured: into.append(args[0]))
                output = features[modality](collator([row]))
                handle.remove()
                words = row["conversations"][1]["value"].split()
                slot = embed(torch.tensor([single_token(processor.tokenizer, w) for w in words]))
                x = captured[0].reshape(len(words), -1)
                entry = per_layer.setdefault(id(layer), (layer, [], []))
                entry[1].append(x)
                entry[2].append(output.reshape(len(words), -1) - slot)
    assert len(per_layer) == 3
    for layer, xs, residuals in per_layer.values():
        x, residual = torch.cat(xs).double(), torch.cat(residuals).double()
        penalty = RIDGE * (x - x.mean(0)).pow(2).mean() * len(x)
        gradient = residual.T @ x + penalty * layer.weight.double()
        scale = (residual.T.abs() @ x.abs()).max()
        assert gradient.abs().max() < 1e-3 * scale
        assert residual.sum(0).abs().max() < 1e-3 * residual.abs().sum(0).max()


def test_length_groups_give_the_padded_batch_loss_and_gradient(task):
    # Reference: the whole batch padded to its longest record, logits at every position, mean
    # cross-entropy over the answer tokens. Groups of 2 sorted by length must match it.
    from unimoe_demo.pretrain import SlotEmbedding, _pad_batch, answer_loss, encode_text_records
    from unimoe_demo.run import _dense_processor_and_model
    from unimoe_demo.synthetic_task import slot_components

    processor, model = _dense_processor_and_model(task, seed=0)
    records = encode_text_records(processor, json.loads(task.pretrain_text.read_text())[:7])
    assert len({len(r["input_ids"]) for r in records}) > 2
    embed = SlotEmbedding(model.get_input_embeddings(), processor.tokenizer, slot_components())
    pad_id = processor.tokenizer.pad_token_id

    batch = _pad_batch(records, pad_id)
    logits = model(inputs_embeds=embed(batch["input_ids"]), attention_mask=batch["attention_mask"]).logits
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
    reference.backward()
    reference_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    grouped = answer_loss(model, embed, records, pad_id, length_group=2)
    grouped.backward()
    torch.testing.assert_close(grouped, reference)
    assert reference_grads and {n for n, p in model.named_parameters() if p.grad is not None} == set(reference_grads)
    for name, parameter in model.named_parameters():
        if name in reference_grads:
            torch.testing.assert_close(parameter.grad, reference_grads[name], atol=1e-6, rtol=1e-4)
