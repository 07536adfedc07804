"""`unimoe-eval`: run a Uni-MoE checkpoint over a benchmark and score it.

unimoe-eval run --model DIR --task pope --data pope.json --media-root IMAGES --output runs/pope
unimoe-eval score --task pope --output runs/pope            # rescore saved predictions
unimoe-eval table runs/* --name "my Uni-MoE"                 # Table-9 layout over several runs
unimoe-eval tasks                                            # the presets
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from .data import load_samples
from .report import PAPER_TABLE9, UNIMOE_ROWS, comparison_table
from .runner import PREDICTIONS_FILE, SCORES_FILE, read_predictions, run_evaluation
from .scoring import score_records
from .tasks import METRICS, TASKS, VOICE_AS, get_task


def _columns(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    pairs = [part.split("=", 1) for part in text.split(",")]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"--columns takes role=column pairs separated by commas, got {text!r}")
    return {role.strip(): column.strip() for role, column in pairs}


def _add_task_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="benchmark preset")
    parser.add_argument("--metric", choices=METRICS, help="override the preset's metric")
    parser.add_argument("--prompt-suffix", help="override the preset's prompt suffix ('' for none)")
    parser.add_argument("--voice-as", choices=VOICE_AS, help="what official `voice` files are")


def _task_from(args):
    return get_task(args.task).replace(metric=args.metric, prompt_suffix=args.prompt_suffix, voice_as=args.voice_as)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimoe-eval", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="generate (resumable) and score")
    run.add_argument("--model", required=True, help="checkpoint folder (or Hub id) with its processor")
    _add_task_overrides(run)
    run.add_argument("--data", required=True, help="official eval JSON/JSONL, a save_to_disk folder or a datasets name")
    run.add_argument("--output", required=True, type=Path, help="folder for predictions.jsonl / scores.json")
    run.add_argument("--media-root", help="folder the eval JSON's media paths are relative to")
    run.add_argument("--annotations", help="VQA-format annotation file supplying references by question_id")
    run.add_argument("--split", help="dataset split (datasets input)")
    run.add_argument("--columns", help="datasets input: role=column pairs, e.g. question=q,answers=a,images=img")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--limit", type=int, help="only the first N samples")
    run.add_argument("--device", help="cuda, cpu, ... (default: cuda if available); auto = device_map='auto'")
    run.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float16, float32")
    run.add_argument("--overwrite", action="store_true", help="discard predictions already in --output")
    run.add_argument("--name", help="row name in the printed table (default: the model folder's name)")
    decoding = run.add_argument_group("generation (overrides the task preset)")
    mode = decoding.add_mutually_exclusive_group()
    mode.add_argument("--greedy", dest="do_sample", action="store_false", default=None)
    mode.add_argument("--sample", dest="do_sample", action="store_true", default=None)
    decoding.add_argument("--max-new-tokens", type=int)
    decoding.add_argument("--min-new-tokens", type=int)
    decoding.add_argument("--temperature", type=float)
    decoding.add_argument("--top-p", type=float)
    decoding.add_argument("--num-beams", type=int)
    decoding.add_argument("--length-penalty", type=float)
    decoding.add_argument("--seed", type=int)

    score = commands.add_parser("score", help="rescore the predictions saved in an output folder")
    _add_task_overrides(score)
    score.add_argument("--output", required=True, type=Path)

    table = commands.add_parser("table", help="Table-9 layout from the scores.json of several runs")
    table.add_argument("runs", nargs="+", type=Path, help="output folders of `run`")
    table.add_argument("--name", default="ours", help="row name")
    table.add_argument("--reference", choices=("uni-moe", "all", "none"), default="uni-moe")

    commands.add_parser("tasks", help="list the task presets")
    return parser


def _print_scores(task, scores: dict, name: str) -> None:
    print(json.dumps({k: v for k, v in scores.items() if k != "table_cell"}, indent=2, ensure_ascii=False))
    if task.table_column:
        print(comparison_table({name: {task.table_column: scores["table_cell"]}}))


def _cmd_run(args) -> None:
    task = _task_from(args)
    settings = task.generation.replace(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        seed=args.seed,
    )
    samples = load_samples(
        args.data,
        task,
        media_root=args.media_root,
        annotations=args.annotations,
        split=args.split,
        columns=_columns(args.columns),
    )
    from .generation import HFGenerator  # loads torch / transformers

    generator = HFGenerator(args.model, device=args.device, dtype=args.dtype)
    run_info = {"model": str(args.model), "data": str(args.data), "split": args.split}
    scores = run_evaluation(
        samples,
        generator,
        task,
        args.output,
        settings=settings,
        batch_size=args.batch_size,
        limit=args.limit,
        run_info=run_info,
        overwrite=args.overwrite,
    )
    _print_scores(task, scores, args.name or Path(args.model).name)


def _cmd_score(args) -> None:
    task = _task_from(args)
    records = list(read_predictions(args.output / PREDICTIONS_FILE).values())
    if not records:
        raise ValueError(f"no predictions in {args.output / PREDICTIONS_FILE}")
    scores = score_records(task, records)
    (args.output / SCORES_FILE).write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    _print_scores(task, scores, args.output.name)


def _cmd_table(args) -> None:
    cells = {}
    for run in args.runs:
        scores_path = run / SCORES_FILE
        if not scores_path.is_file():
            raise ValueError(f"{run}: no {SCORES_FILE} (run `unimoe-eval run` or `score` first)")
        scores = json.loads(scores_path.read_text())
        column = get_task(scores["task"]).table_column
        if column is None:
            print(f"note: {run} ({scores['task']}) has no column in the paper's table", file=sys.stderr)
            continue
        cells[column] = scores["table_cell"]
    reference = {"uni-moe": UNIMOE_ROWS, "all": tuple(PAPER_TABLE9), "none": ()}[args.reference]
    print(comparison_table({args.name: cells}, reference))


def _cmd_tasks(_args) -> None:
    for task in TASKS.values():
        column = f"[{task.table_column}] " if task.table_column else ""
        print(f"{task.name:15s} {column}{task.title}: {task.metric}, {task.modality}, {task.generation.describe()}")


def main(argv: list[str] | None = None) -> None:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"run": _cmd_run, "score": _cmd_score, "table": _cmd_table, "tasks": _cmd_tasks}
    try:
        handlers[args.command](args)
    except ValueError as err:
        # Bad input (files, settings, columns): one clear line, not a traceback.
        raise SystemExit(f"unimoe-eval: error: {err}") from err


if __name__ == "__main__":
    main()
