"""Loading evaluation samples: official eval JSON format, VQA annotations, `datasets` datasets."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from unimoe_evaluation.data import (
    DatasetFormatError,
    add_suffix,
    load_eval_json,
    load_hf_dataset,
    load_samples,
    load_vqa_annotations,
)
from unimoe_evaluation.tasks import VQA_SUFFIX, get_task


@pytest.fixture
def media(tmp_path):
    root = tmp_path / "media"
    (root / "coco").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(root / "coco" / "1.png")
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / f"frame_{i}.png")
    (root / "talk.wav").write_bytes(b"RIFF")  # only its existence matters here
    return root


def _write(path, items):
    path.write_text(json.dumps(items))
    return path


def test_official_vqa_item(tmp_path, media):
    items = [
        {
            "question_id": 7,
            "image": "/coco/1.png",  # official paths are archive member names with a leading "/"
            "text": "What colour?\nAnswer the question using a single word or phrase.",
            "category": "default",
            "gt": ["red"] * 10,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour?\nAnswer the question using a single word or phrase."},
                {"from": "gpt", "value": ""},
            ],
        }
    ]
    (sample,) = load_eval_json(_write(tmp_path / "okvqa.json", items), get_task("okvqa"), media_root=media)
    assert sample.id == "7"
    assert sample.prompt == "<image>\nWhat colour?" + VQA_SUFFIX  # suffix not added twice
    assert sample.media == {"images": [str(media / "coco" / "1.png")]}
    assert sample.references == ["red"] * 10
    assert sample.subset is None  # "default" is no subset


def test_official_mmbench_item_parses_options_and_list_answer(tmp_path, media):
    prompt = "<image>\nWhich colour?\nOptions:\nA.red\nB.blue" + VQA_SUFFIX
    items = [
        {
            "id": "MMBench1.1-1",
            "image": ["coco/1.png"],
            "category": ["attribute"],
            "answer": ["A"],
            "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": ""}],
        }
    ]
    (sample,) = load_eval_json(_write(tmp_path / "mmb.json", items), get_task("mmbench"), media_root=media)
    assert sample.options == {"A": "red", "B": "blue"}
    assert sample.references == ["A"]
    assert sample.subset is None  # a category list is not a subset


def test_voice_and_audio_placeholder_follow_the_task(tmp_path, media):
    items = [
        {
            "id": "r1",
            "voice": ["talk.wav"],  # relative to the JSON's folder when no media root has it
            "subset": "middle",
            "conversations": [
                {"from": "human", "value": "<audio>\nListen and answer."},
                {"from": "gpt", "value": "its environment"},
            ],
        }
    ]
    path = _write(media / "race.json", items)
    (speech,) = load_eval_json(path, get_task("race_audio"))
    assert speech.prompt == "<speech>\nListen and answer."
    assert speech.media == {"speech": [str(media / "talk.wav")]}
    assert speech.references == ["its environment"]  # from the gpt turn
    assert speech.subset == "middle"
    (audio,) = load_eval_json(path, get_task("clothoaqa"))
    assert audio.prompt == "<audio>\nListen and answer."
    assert audio.media == {"audios": [str(media / "talk.wav")]}


def test_placeholder_voice_follows_each_placeholder(tmp_path, media):
    # The synthetic task mixes both: each `voice` file goes where its placeholder says.
    (media / "noise.wav").write_bytes(b"RIFF")
    items = [
        {
            "id": "m1",
            "voice": ["talk.wav", "noise.wav"],
            "modality": "mixed",
            "conversations": [{"from": "human", "value": "<speech>\n<audio>\nAnswer."}, {"from": "gpt", "value": "red"}],
        },
        {"id": "m2", "voice": ["talk.wav"], "conversations": [{"from": "human", "value": "Answer."}]},
    ]
    task = get_task("synthetic")
    (sample,) = load_eval_json(_write(media / "mixed.json", items[:1]), task)
    assert sample.prompt == "<speech>\n<audio>\nAnswer."
    assert sample.media == {"speech": [str(media / "talk.wav")], "audios": [str(media / "noise.wav")]}
    assert sample.subset == "mixed" and sample.references == ["red"]
    with pytest.raises(DatasetFormatError, match="1 `voice` files but 0 <speech>/<audio> placeholders"):
        load_eval_json(_write(media / "extra.json", items[1:]), task)


def test_own_keys_keep_their_placeholders(tmp_path, media):
    items = [{"id": 1, "audio": "talk.wav", "conversations": [{"from": "human", "value": "<audio>\nWhat is it?"}]}]
    (sample,) = load_eval_json(_write(media / "own.json", items), get_task("race_audio"))
    assert sample.prompt == "<audio>\nWhat is it?"  # general audio, although the task's voice is speech
    assert sample.media == {"audios": [str(media / "talk.wav")]}


def test_video_as_frame_files(tmp_path, media):
    frames = [f"frame_{i}.png" for i in range(3)]
    items = [{"id": 1, "video": frames, "conversations": [{"from": "human", "value": "<video>\nWhat happens?"}]}]
    (sample,) = load_eval_json(_write(tmp_path / "v.json", items), get_task("activitynet_qa"), media_root=media)
    assert sample.media == {"videos": [[str(media / f) for f in frames]]}  # one video of 3 frames


def test_annotations_supply_references(tmp_path, media):
    items = [{"question_id": 5, "image": "coco/1.png", "conversations": [{"from": "human", "value": "<image>\nQ?"}]}]
    annotations = {
        "annotations": [{"question_id": 5, "answers": [{"answer": "red", "answer_id": i} for i in range(10)]}]
    }
    ann_path = tmp_path / "ann.json"
    ann_path.write_text(json.dumps(annotations))
    assert load_vqa_annotations(ann_path) == {"5": ["red"] * 10}
    (sample,) = load_samples(
        _write(tmp_path / "okvqa.json", items), get_task("okvqa"), media_root=media, annotations=ann_path
    )
    assert sample.references == ["red"] * 10
    assert sample.prompt.endswith(VQA_SUFFIX)  # suffix appended when missing


def _item(i, value="<image>\nQ?", image="coco/1.png"):
    return {"id": i, "image": image, "conversations": [{"from": "human", "value": value}]}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([_item(1), _item(1)], "duplicate sample id '1'"),
        ([_item(1, value="no placeholder")], r"0 <image> placeholder\(s\) but 1 images"),
        ([_item(1, image="coco/missing.png")], "media file 'coco/missing.png' not found"),
        ([{"id": 1}], "no human turn"),
    ],
)
def test_bad_eval_files_name_the_problem(tmp_path, media, items, message):
    with pytest.raises(DatasetFormatError, match=message):
        load_eval_json(_write(tmp_path / "bad.json", items), get_task("okvqa"), media_root=media)


def test_not_a_list(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    with pytest.raises(DatasetFormatError, match="list of items"):
        load_eval_json(path, get_task("okvqa"))


def test_add_suffix():
    assert add_suffix("Q?", VQA_SUFFIX) == "Q?" + VQA_SUFFIX
    assert add_suffix("Q?" + VQA_SUFFIX + "\n", VQA_SUFFIX) == "Q?" + VQA_SUFFIX + "\n"
    assert add_suffix("Q?", "") == "Q?"


def _wav_bytes() -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    return buffer.getvalue()


def test_hf_dataset_from_disk_with_images_audio_and_options(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_dict(
        {
            "question": ["Which colour?", "Which sound?"],
            "image": [Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")],
            "speech": [{"bytes": _wav_bytes(), "path": None}] * 2,
            "choices": [["red", "blue"], ["tone", "noise"]],
            "answer": [0, 1],  # an option index
            "category": ["long", "short"],
        }
    )
    dataset = dataset.cast_column("image", datasets.Image()).cast_column("speech", datasets.Audio())
    dataset.save_to_disk(tmp_path / "ds")
    samples = load_hf_dataset(str(tmp_path / "ds"), get_task("ehsl"))
    assert [s.id for s in samples] == ["0", "1"]
    first = samples[0]
    assert first.prompt == "<image>\n<speech>\nWhich colour?\nA. red\nB. blue"
    assert first.options == {"A": "red", "B": "blue"}
    assert first.references == ["A"] and samples[1].references == ["B"]
    assert first.subset == "long"
    assert isinstance(first.media["images"][0], Image.Image)
    assert first.media["speech"][0][:4] == b"RIFF"  # undecoded: the processor decodes


def test_hf_dataset_column_roles(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"q": ["Is it red?"], "a": [["yes", "yes"]], "qid": [42]}).save_to_disk(tmp_path / "ds")
    (sample,) = load_hf_dataset(
        str(tmp_path / "ds"), get_task("pope"), columns={"question": "q", "answers": "a", "id": "qid"}
    )
    assert (sample.id, sample.prompt, sample.references) == ("42", "Is it red?" + VQA_SUFFIX, ["yes", "yes"])
    with pytest.raises(DatasetFormatError, match="column 'nope'"):
        load_hf_dataset(str(tmp_path / "ds"), get_task("pope"), columns={"question": "nope"})
    with pytest.raises(DatasetFormatError, match="no question column"):
        load_hf_dataset(str(tmp_path / "ds"), get_task("pope"))
