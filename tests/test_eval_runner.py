"""The runner's mechanics with a scripted generator: batching, JSONL, resume after a crash,
run-settings checks, scoring, submission files, the CLI's score/table commands."""

import json

import pytest

from unimoe_evaluation.cli import main
from unimoe_evaluation.data import EvalSample
from unimoe_evaluation.generation import GenerationSettings
from unimoe_evaluation.report import PAPER_COLUMNS, PAPER_TABLE9, comparison_table
from unimoe_evaluation.runner import RunMismatchError, read_predictions, run_evaluation
from unimoe_evaluation.tasks import get_task

ANSWERS = {"0": "yes", "1": "No.", "2": "no", "3": "Yes", "4": "yes"}
LABELS = ["yes", "no", "yes", "no", "yes"]


def _samples(n=5):
    return [
        EvalSample(id=str(i), prompt=f"Is there object {i}?", references=[LABELS[i]], subset="random") for i in range(n)
    ]


class ScriptedGenerator:
    """Answers from ANSWERS; records each batch; optionally crashes on the k-th call."""

    def __init__(self, crash_on_call=None):
        self.batches, self.crash_on_call = [], crash_on_call

    def __call__(self, samples, settings):
        if self.crash_on_call is not None and len(self.batches) == self.crash_on_call:
            raise KeyboardInterrupt("simulated crash")
        self.batches.append([s.id for s in samples])
        return [ANSWERS[s.id] for s in samples]


def test_run_writes_predictions_and_scores(tmp_path):
    generator = ScriptedGenerator()
    scores = run_evaluation(_samples(), generator, get_task("pope"), tmp_path, batch_size=2, progress=False)
    assert generator.batches == [["0", "1"], ["2", "3"], ["4"]]
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["prediction"] for line in lines] == [ANSWERS[str(i)] for i in range(5)]
    # yes/no answers: yes no no yes yes vs labels yes no yes no yes -> TP 2, FP 1, TN 1, FN 1.
    assert scores["details"]["random"]["precision"] == pytest.approx(2 / 3)
    assert scores["details"]["random"]["recall"] == pytest.approx(2 / 3)
    assert scores["score"] == pytest.approx(100 * 2 / 3)
    assert json.loads((tmp_path / "scores.json").read_text())["score"] == pytest.approx(scores["score"])
    assert json.loads((tmp_path / "run.json").read_text())["generation"]["max_new_tokens"] == 512


def test_resume_after_crash_recomputes_nothing(tmp_path):
    task = get_task("pope")
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(_samples(), ScriptedGenerator(crash_on_call=2), task, tmp_path, batch_size=2, progress=False)
    assert sorted(read_predictions(tmp_path / "predictions.jsonl")) == ["0", "1", "2", "3"]
    generator = ScriptedGenerator()
    scores = run_evaluation(_samples(), generator, task, tmp_path, batch_size=2, progress=False)
    assert generator.batches == [["4"]]
    assert scores["n"] == 5


def test_unfinished_last_line_is_dropped_and_redone(tmp_path):
    task = get_task("pope")
    run_evaluation(_samples(3), ScriptedGenerator(), task, tmp_path, batch_size=8, progress=False)
    path = tmp_path / "predictions.jsonl"
    with open(path, "a") as f:
        f.write('{"id": "3", "predic')  # a crash in the middle of a write
    generator = ScriptedGenerator()
    run_evaluation(_samples(5), generator, task, tmp_path, batch_size=8, progress=False)
    assert generator.batches == [["3", "4"]]
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["0", "1", "2", "3", "4"]


def test_corrupt_middle_line_raises(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "0", "prediction": "yes"}\nnot json\n{"id": "2", "prediction": "no"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_predictions(path)


def test_other_settings_are_refused_unless_overwrite(tmp_path):
    task = get_task("pope")
    run_evaluation(_samples(2), ScriptedGenerator(), task, tmp_path, progress=False)
    other = GenerationSettings(max_new_tokens=8)
    with pytest.raises(RunMismatchError, match="generation.max_new_tokens: 512 then, 8 now"):
        run_evaluation(_samples(2), ScriptedGenerator(), task, tmp_path, settings=other, progress=False)
    generator = ScriptedGenerator()
    run_evaluation(_samples(2), generator, task, tmp_path, settings=other, overwrite=True, progress=False)
    assert generator.batches == [["0", "1"]]  # started over


def test_limit_and_unscored_samples(tmp_path):
    samples = _samples()
    samples[1].references = []
    scores = run_evaluation(samples, ScriptedGenerator(), get_task("pope"), tmp_path, limit=3, progress=False)
    assert (scores["n"], scores["n_unscored"]) == (3, 1)


def test_submission_files(tmp_path):
    samples = [EvalSample(id="123", prompt="<image>\nQ?"), EvalSample(id="v1_0", prompt="Q?")]

    def generate(batch, settings):
        return ["two"] * len(batch)

    vqav2 = run_evaluation(samples[:1], generate, get_task("vqav2"), tmp_path / "vqa", progress=False)
    assert vqav2["score"] is None and vqav2["n_unscored"] == 1
    assert json.loads((tmp_path / "vqa" / "submission_vqav2.json").read_text()) == [
        {"question_id": 123, "answer": "two"}
    ]
    mmvet = run_evaluation(samples[1:], generate, get_task("mmvet"), tmp_path / "mmvet", progress=False)
    assert mmvet["table_cell"] == "–"
    assert json.loads((tmp_path / "mmvet" / "submission_mmvet.json").read_text()) == {"v1_0": "two"}


def test_generator_must_answer_every_sample(tmp_path):
    with pytest.raises(RuntimeError, match="1 answers for 2 samples"):
        run_evaluation(_samples(2), lambda batch, settings: ["yes"], get_task("pope"), tmp_path, progress=False)


def test_subset_cells_in_paper_order(tmp_path):
    samples = [
        EvalSample(id=str(i), prompt="Q", references=["A"], options={"A": "x", "B": "y"}, subset=subset)
        for i, subset in enumerate(["short", "long", "long", "short"])
    ]
    answers = {"0": "A", "1": "A", "2": "B", "3": "B"}
    scores = run_evaluation(
        samples, lambda b, s: [answers[x.id] for x in b], get_task("ehsl"), tmp_path, progress=False
    )
    assert scores["score"] == 50.0
    assert scores["table_cell"] == "50.00/50.00"
    assert scores["subsets"] == {"short": {"n": 2, "score": 50.0}, "long": {"n": 2, "score": 50.0}}


def test_generation_settings_overrides():
    sample = get_task("activitynet_qa").generation
    assert sample.generate_kwargs() == {"max_new_tokens": 1024, "do_sample": True, "num_beams": 1, "temperature": 0.2}
    greedy = sample.replace(do_sample=False, max_new_tokens=16)
    assert greedy.generate_kwargs() == {"max_new_tokens": 16, "do_sample": False, "num_beams": 1}
    with pytest.raises(ValueError, match="temperature > 0"):
        GenerationSettings(do_sample=True)
    with pytest.raises(ValueError, match="unknown generation settings"):
        sample.replace(beams=2)


def test_paper_table():
    assert PAPER_TABLE9["Uni-MoE Task4 8E + Aux_loss"]["VQAv2"] == "76.7"
    assert PAPER_TABLE9["Uni-MoE Task2 4E (I,T,S,V)"]["EHSL"] == "42.00/48.00"
    table = comparison_table({"ours": {"POPE": "12.34"}}, ["Uni-MoE Task3 4E (I,T,A,V)"])
    header, separator, paper, ours = table.splitlines()
    assert [c.strip() for c in header.strip("|").split("|")] == ["model", *PAPER_COLUMNS]
    assert [c.strip() for c in ours.strip("|").split("|")] == ["ours", "–", "–", "–", "–", "12.34", *["–"] * 5]
    assert "86.10" in paper


def test_columns_outside_the_paper_follow_its_ten():
    table = comparison_table({"ours": {"POPE": "1.00", "Synthetic": "90.00/80.00"}}, [])
    header, _, ours = table.splitlines()
    assert [c.strip() for c in header.strip("|").split("|")] == ["model", *PAPER_COLUMNS, "Synthetic"]
    assert ours.split("|")[-2].strip() == "90.00/80.00"
    assert get_task("synthetic").table_column == "Synthetic" and get_task("pope").table_column == "POPE"


def test_cli_score_and_table(tmp_path, capsys):
    run_evaluation(_samples(), ScriptedGenerator(), get_task("pope"), tmp_path / "pope", progress=False)
    (tmp_path / "pope" / "scores.json").unlink()
    main(["score", "--task", "pope", "--output", str(tmp_path / "pope")])
    assert json.loads((tmp_path / "pope" / "scores.json").read_text())["score"] == pytest.approx(100 * 2 / 3)
    capsys.readouterr()
    main(["table", str(tmp_path / "pope"), "--name", "tiny", "--reference", "none"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1].split("|")[1].strip() == "tiny" and out[-1].split("|")[6].strip() == "66.67"
    with pytest.raises(SystemExit, match="no scores.json"):
        main(["table", str(tmp_path / "missing")])


def _records(pairs, **extra):
    return [{"id": str(i), "prediction": p, "references": r, **extra} for i, (p, r) in enumerate(pairs)]


def test_score_records_per_metric():
    from unimoe_evaluation.scoring import score_records

    vqa = score_records(get_task("okvqa"), _records([("Red.", ["red"] * 10), ("blue", ["red"] * 10)]))
    assert vqa["score"] == 50.0
    aok = score_records(get_task("aokvqa"), _records([("cigar", ["cigar"] * 2 + ["pipe"] * 8)]))
    assert aok["score"] == pytest.approx(100 * 2 / 3)
    options = {"A": "red", "B": "blue"}
    mc = score_records(get_task("mmbench"), _records([("B", ["B"]), ("red", ["B"]), ("blue", ["B"])], options=options))
    assert mc["score"] == pytest.approx(100 * 2 / 3)
    em = score_records(get_task("activitynet_qa"), _records([("Yes.", ["yes"]), ("two", ["2", "3"]), ("no", ["yes"])]))
    assert em["score"] == pytest.approx(100 * 2 / 3)
    assert "GPT-judged" in em["note"]


def test_score_records_caption():
    from unimoe_evaluation.cider import cider_d
    from unimoe_evaluation.scoring import score_records
    from unimoe_evaluation.text_metrics import bleu, rouge_l

    pairs = [("a dog barks", ["a dog barks loudly", "a dog is barking"]), ("rain falls", ["heavy rain falls"])]
    scores = score_records(get_task("clotho_v2"), _records(pairs))
    predictions, references = [p for p, _ in pairs], [r for _, r in pairs]
    assert scores["score"] == pytest.approx(100 * cider_d(predictions, references)[0])
    assert scores["details"]["bleu4"] == pytest.approx(bleu(predictions, references))
    assert scores["details"]["rouge_l"] == pytest.approx(100 * rouge_l(predictions, references))
    meteor = scores["details"]["meteor"]
    assert isinstance(meteor, float) or meteor.startswith("unavailable: METEOR needs NLTK's WordNet")


def test_finished_run_never_loads_the_model(tmp_path):
    from unimoe_evaluation.generation import HFGenerator

    first = run_evaluation(_samples(), ScriptedGenerator(), get_task("pope"), tmp_path, progress=False)
    # Nothing is left to generate, so the (nonexistent) checkpoint is never opened.
    again = run_evaluation(
        _samples(), HFGenerator("/nonexistent/checkpoint"), get_task("pope"), tmp_path, progress=False
    )
    assert again["score"] == first["score"]
