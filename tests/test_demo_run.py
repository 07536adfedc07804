"""The demo end to end, shortened (`unimoe-demo --quick`): it must learn, not just run."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

from unimoe_demo.synthetic_task import MODALITIES

CHANCE = 0.25  # every question type has at least four answers


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`unimoe-demo --quick` in its own process, as a user runs it (stage scripts, Trainer and
    process-group state stay out of this test process)."""
    out = tmp_path_factory.mktemp("demo")
    command = [sys.executable, "-m", "unimoe_demo", "--quick", "--output-dir", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    return SimpleNamespace(
        output_dir=out,
        model_dir=out / "unimoe-demo",
        plot=out / "routing.png",
        table=result.stdout,
        accuracy=results["accuracy"],
        dense_accuracy=results["dense_accuracy"],
        baseline=results["majority_baseline"],
        routing_shares=results["routing_shares"],
    )


def test_image_and_audio_answers_are_above_chance(quick_run):
    # Above uniform chance by a margin, and above always giving the most common training answer.
    for modality in ("image", "audio"):
        accuracy = quick_run.accuracy[modality]
        assert accuracy > CHANCE + 0.15 and accuracy > quick_run.baseline[modality], (
            modality,
            quick_run.accuracy,
            quick_run.baseline,
        )


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
    for shares in quick_run.routing_shares.values():
        for layer in shares:
            assert sum(layer) == pytest.approx(1.0)
    with Image.open(quick_run.plot) as plot:
        assert plot.format == "PNG" and plot.width > 300


def test_hub_folder_carries_its_code(quick_run):
    files = {path.name for path in quick_run.model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_unimoe.py", "processing_unimoe.py"} <= files


def test_unimoe_eval_scores_the_demo_model_as_the_demo_does(quick_run, tmp_path, capsys):
    # Another path to the same answers: batched, left-padded generation from the Hub folder and
    # normalised exact match, against the demo's one-by-one pipeline calls.
    from unimoe_evaluation.cli import main

    output = tmp_path / "eval"
    test_split = quick_run.output_dir / "data" / "test.json"
    args = ["run", "--model", str(quick_run.model_dir), "--task", "synthetic", "--data", str(test_split)]
    main([*args, "--output", str(output), "--device", "cpu", "--dtype", "float32", "--name", "demo"])
    scores = json.loads((output / "scores.json").read_text())
    for modality in MODALITIES:
        assert scores["subsets"][modality]["score"] == pytest.approx(100 * quick_run.accuracy[modality])
    lines = capsys.readouterr().out.strip().splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert header.split("|")[-2].strip() == "Synthetic"
    assert lines[-1].split("|")[-2].strip() == scores["table_cell"] and lines[-1].split("|")[1].strip() == "demo"
