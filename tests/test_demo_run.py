"""The demo end to end, shortened (`unimoe-demo --quick`): it must learn, not just run."""

import json

import pytest
from PIL import Image

from unimoe_demo.run import QUICK, run_demo
from unimoe_demo.synthetic_task import MODALITIES

CHANCE = 0.25  # every question type has at least four answers


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_demo(tmp_path_factory.mktemp("demo"), QUICK, quiet=True)


def test_image_and_audio_answers_are_above_chance(quick_run):
    # Above both uniform chance and always giving the most common training answer.
    for modality in ("image", "audio"):
        floor = max(CHANCE, quick_run.baseline[modality])
        assert quick_run.accuracy[modality] > floor + 0.15, (modality, quick_run.accuracy, quick_run.baseline)


def test_every_modality_is_answered_and_reported(quick_run):
    assert set(quick_run.accuracy) == set(MODALITIES)
    assert set(quick_run.dense_accuracy) == {"image", "video", "speech", "audio"}
    for modality in MODALITIES:
        row = next(line for line in quick_run.table.splitlines() if line.startswith(f"| {modality} |"))
        assert f"{100 * quick_run.accuracy[modality]:.0f}%" in row
    results = json.loads((quick_run.output_dir / "results.json").read_text())
    assert len(results["answers"]) == sum(1 for _ in results["answers"]) > 0
    assert {a["modality"] for a in results["answers"]} == set(MODALITIES)


def test_routing_shares_are_distributions_and_plotted(quick_run):
    for modality, shares in quick_run.routing_shares.items():
        for layer in shares:
            assert sum(layer) == pytest.approx(1.0)
    with Image.open(quick_run.plot) as plot:
        assert plot.format == "PNG" and plot.width > 300


def test_hub_folder_carries_its_code(quick_run):
    files = {path.name for path in quick_run.model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_unimoe.py", "processing_unimoe.py"} <= files
