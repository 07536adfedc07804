"""Evaluation harness for the Uni-MoE paper's benchmarks: datasets → batched, resumable
generation → predictions JSONL → scores, printed in the layout of the paper's Table 9.
See docs/evaluation.md."""

from .choice import choice_correct, extract_choice, parse_options
from .cider import cider_d
from .data import EvalSample, load_eval_json, load_hf_dataset, load_samples, load_vqa_annotations
from .generation import GenerationSettings, Generator, HFGenerator
from .normalize import normalize_answer
from .pope import pope_scores, yes_no
from .report import PAPER_TABLE9, comparison_table, format_table
from .runner import read_predictions, run_evaluation
from .scoring import score_records
from .tasks import TASKS, TaskPreset, get_task
from .text_metrics import MetricUnavailable, bleu, exact_match, meteor, rouge_l
from .vqa import aokvqa_accuracy, vqa_accuracy

__all__ = [
    "PAPER_TABLE9",
    "TASKS",
    "EvalSample",
    "GenerationSettings",
    "Generator",
    "HFGenerator",
    "MetricUnavailable",
    "TaskPreset",
    "aokvqa_accuracy",
    "bleu",
    "choice_correct",
    "cider_d",
    "comparison_table",
    "exact_match",
    "extract_choice",
    "format_table",
    "get_task",
    "load_eval_json",
    "load_hf_dataset",
    "load_samples",
    "load_vqa_annotations",
    "meteor",
    "normalize_answer",
    "parse_options",
    "pope_scores",
    "read_predictions",
    "rouge_l",
    "run_evaluation",
    "score_records",
    "vqa_accuracy",
    "yes_no",
]
