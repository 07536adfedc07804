"""The whole Uni-MoE recipe on a synthetic multimodal task, on a CPU, in minutes (`run_demo`;
the command line is `cli.py`):

1. writes the task (PNG images, MP4 videos, WAV speech and sounds, official JSON splits);
2. builds a tiny dense Uni-MoE from scratch and pre-trains its language model on the task's text
   and its encoders on per-patch labels (the released model starts from pre-trained parts);
3. stage 1 (connectors; their last layers start at a least-squares fit, `connector_init.py`),
   stage 2 (one dense run per modality), stage 3 (MoE from the four stage-2 MLPs, LoRA +
   routers) with the real `unimoe_trl` stage scripts;
4. saves the MoE as a Hub folder, reloads it with `pipeline("any-to-text", trust_remote_code=True)`,
   answers the held-out questions and prints exact match per modality (dense stage-2 models
   beside the MoE) and each expert's share of every modality's media tokens; writes
   `routing.png` and `results.json`.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .stages import StageSettings
from .synthetic_task import MODALITIES, SINGLE_MODALITIES, TaskSizes, generate_task

# Expert k of the MoE is the stage-2 MLP of EXPERT_ORDER[k].
EXPERT_ORDER = SINGLE_MODALITIES


@dataclass(frozen=True)
class DemoSettings:
    """Everything that sets the demo's size and length (defaults: the full demo)."""

    sizes: TaskSizes = TaskSizes()
    lm_pretrain_steps: int = 800  # seeds 0-2 >= 90% everywhere; 600 (before the warm start) left video at 75-89%
    lm_pretrain_lr: float = 3e-3
    encoder_pretrain_steps: int = 400
    stage1: StageSettings = StageSettings(steps=400, learning_rate=2e-3)
    stage2: StageSettings = StageSettings(steps=100, learning_rate=2e-3)
    stage3: StageSettings = StageSettings(steps=250, learning_rate=1e-3)
    connector_warm_start: bool = True  # projectors' last layers start at least squares (`connector_init.py`)
    router_warm_start: bool = True  # stage-3 routers start at the modality centroids (`router_init.py`)
    router_warm_start_items: int = 16  # stage-2 items per modality the centroids are taken over
    stage3_trains_projectors: bool = False  # official: True; here stage 3 moved them off (quickstart.md)
    seed: int = 0
    dataloader_workers: int = 1
    max_test_questions: int | None = None  # per modality; None = all of them


QUICK = DemoSettings(
    sizes=TaskSizes(caption=100, instruct=150, stage3=50, mixed=100, test=20),
    lm_pretrain_steps=300,
    encoder_pretrain_steps=200,
    stage1=StageSettings(steps=150, learning_rate=2e-3),
    stage2=StageSettings(steps=30, learning_rate=2e-3),
    stage3=StageSettings(steps=80, learning_rate=1e-3),
    router_warm_start_items=8,
    dataloader_workers=0,
)


@dataclass
class DemoResult:
    output_dir: Path
    model_dir: Path
    accuracy: dict[str, float]  # MoE, per modality
    dense_accuracy: dict[str, dict[str, float]]  # expert modality -> test modality -> exact match
    baseline: dict[str, float]
    routing_shares: dict[str, list]  # modality -> (layers, experts)
    timings: dict[str, float] = field(default_factory=dict)
    plot: Path | None = None
    table: str = ""


class _Banner:
    """Numbered stage banners with elapsed time."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.step, self.start, self.quiet = total, 0, time.perf_counter(), quiet
        self.timings: dict[str, float] = {}
        self._last = self.start
        self._name = None

    def __call__(self, name: str, text: str) -> None:
        self._close()
        self.step += 1
        self._name = name
        if not self.quiet:
            elapsed = time.perf_counter() - self.start
            print(f"\n[{self.step}/{self.total}] {text}  (t = {elapsed:.0f} s)", flush=True)

    def _close(self) -> None:
        now = time.perf_counter()
        if self._name is not None:
            self.timings[self._name] = now - self._last
        self._last = now

    def done(self) -> dict[str, float]:
        self._close()
        self._name = None
        self.timings["total"] = time.perf_counter() - self.start
        return self.timings


def _dense_processor_and_model(task, seed: int):
    from modeling_unimoe import UniMoeForConditionalGeneration

    from .model import demo_config, demo_processor, train_tokenizer

    tokenizer = train_tokenizer(task.text_corpus)
    config = demo_config(len(tokenizer) - 4, moe_layers=[])  # stages 1-2 run dense
    torch.manual_seed(seed)
    model = UniMoeForConditionalGeneration(config)
    return demo_processor(tokenizer, config), model


def demo_layers(model_dir: Path) -> int:
    from modeling_unimoe import UniMoeConfig

    return UniMoeConfig.from_pretrained(model_dir).text_config.num_hidden_layers


def _progress_printer(name: str, steps: int, quiet: bool):
    every = max(1, steps // 5)

    def progress(step: int, loss: float) -> None:
        if not quiet and (step + 1) % every == 0:
            print(f"  {name} step {step + 1}/{steps}  loss {loss:.3f}", flush=True)

    return progress


def _load_json(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())


def _test_records(task, limit: int | None) -> list[dict]:
    records = _load_json(task.test)
    if limit is None:
        return records
    kept, seen = [], {}
    for record in records:
        seen[record["modality"]] = seen.get(record["modality"], 0) + 1
        if seen[record["modality"]] <= limit:
            kept.append(record)
    return kept


def run_demo(output_dir: str | Path, settings: DemoSettings = DemoSettings(), quiet: bool = False) -> DemoResult:
    """Runs the whole demo in `output_dir` (created) and returns its numbers."""
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from modeling_unimoe import UniMoeForConditionalGeneration, UniMoeProcessor

    from .connector_init import warm_start_connectors
    from .evaluate import answer_questions, majority_baseline
    from .pretrain import pretrain_encoders, pretrain_language_model
    from .report import accuracy_table, plot_routing, routing_table
    from .router_init import write_modality_routers
    from .stages import run_stage1, run_stage2, run_stage3

    hf_logging.set_verbosity_error()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    banner = _Banner(total=8, quiet=quiet)
    s = settings

    banner("data", "writing the synthetic task (PNG, MP4, WAV + official JSON)")
    task = generate_task(output_dir / "data", seed=s.seed, sizes=s.sizes)

    banner("pretrain", "building a tiny Uni-MoE from scratch; pre-training its LM on text and its encoders on labels")
    processor, model = _dense_processor_and_model(task, s.seed)
    pretrain_language_model(
        model,
        processor,
        _load_json(task.pretrain_text),
        steps=s.lm_pretrain_steps,
        lr=s.lm_pretrain_lr,
        seed=s.seed,
        progress=_progress_printer("LM text pre-training", s.lm_pretrain_steps, quiet),
    )
    pretrain_encoders(
        model,
        processor,
        json.loads(task.media_labels.read_text()),
        task.root,
        steps=s.encoder_pretrain_steps,
        seed=s.seed,
        progress=_progress_printer("encoder pre-training", s.encoder_pretrain_steps, quiet),
    )
    if s.connector_warm_start:
        slots = [r for r in _load_json(task.stage1) if r["question_type"] == "slots"]
        r2 = warm_start_connectors(
            model, processor, {m: [r for r in slots if r["modality"] == m] for m in EXPERT_ORDER}, task.root
        )
        if not quiet:
            print(
                "  connector warm start (least squares onto the slot words), R²: "
                + ", ".join(f"{m} {v:.2f}" for m, v in r2.items())
            )
    stage0 = output_dir / "stage0-pretrained"
    model.save_pretrained(stage0)
    processor.save_pretrained(stage0)
    del model

    workers = s.dataloader_workers
    banner("stage1", f"stage 1: aligning the connectors on captions ({s.stage1.steps} steps)")
    run_stage1(stage0, task.stage1, output_dir / "stage1", s.stage1, s.seed, workers)

    banner("stage2", f"stage 2: one dense run per modality ({s.stage2.steps} steps each)")
    expert_dirs = []
    for modality in EXPERT_ORDER:
        if not quiet:
            print(f"  stage 2 on {modality}", flush=True)
        target = output_dir / f"stage2-{modality}"
        run_stage2(output_dir / "stage1", task.stage2[modality], modality, target, s.stage2, s.seed, workers)
        expert_dirs.append(target)

    banner("stage3", f"stage 3: MoE from the 4 stage-2 MLPs, LoRA + routers on mixed data ({s.stage3.steps} steps)")
    router_init = None
    if s.router_warm_start:
        samples = {m: _load_json(task.stage2[m])[: s.router_warm_start_items] for m in EXPERT_ORDER}
        layers = range(demo_layers(output_dir / "stage1"))
        router_init = write_modality_routers(
            output_dir / "stage1", samples, task.root, layers, output_dir / "router_init.safetensors"
        )
    result3 = run_stage3(
        output_dir / "stage1",
        expert_dirs,
        task.stage3,
        output_dir / "stage3",
        s.stage3,
        s.seed,
        workers,
        router_init,
        s.stage3_trains_projectors,
    )

    banner("save", "saving the Hub folder and reloading it with pipeline('any-to-text')")
    model_dir = output_dir / "unimoe-demo"
    merged = UniMoeForConditionalGeneration.from_pretrained(result3.files["merged"])
    merged_processor = UniMoeProcessor.from_pretrained(result3.files["merged"])
    merged.save_pretrained(model_dir)
    merged_processor.save_pretrained(model_dir)
    del merged
    pipe = pipeline("any-to-text", model=str(model_dir), trust_remote_code=True)

    test = _test_records(task, s.max_test_questions)
    banner("evaluate", f"answering {len(test)} held-out questions (MoE, then the dense stage-2 models)")
    moe_eval = answer_questions(pipe, test, task.root, record_routing=True)
    dense = {}
    for modality, expert_dir in zip(EXPERT_ORDER, expert_dirs):
        dense_pipe = pipeline("any-to-text", model=str(expert_dir), trust_remote_code=True)
        subset = [r for r in test if r["modality"] in (modality, "mixed")]
        dense[modality] = answer_questions(dense_pipe, subset, task.root).accuracy()

    banner("report", "results")
    train_records = [r for path in task.stage2.values() for r in _load_json(path)] + _load_json(task.stage3)
    baseline = majority_baseline(train_records, test)
    counts = {m: sum(r["modality"] == m for r in test) for m in MODALITIES}
    accuracy = moe_eval.accuracy()
    shares = moe_eval.routing_shares()
    table = accuracy_table(accuracy, dense, baseline, counts)
    table += "\n\n" + routing_table(shares, EXPERT_ORDER)
    plot = plot_routing(shares, EXPERT_ORDER, output_dir / "routing.png")
    timings = banner.done()
    result = DemoResult(
        output_dir=output_dir,
        model_dir=model_dir,
        accuracy=accuracy,
        dense_accuracy=dense,
        baseline=baseline,
        routing_shares={m: v.tolist() for m, v in shares.items()},
        timings=timings,
        plot=plot,
        table=table,
    )
    _write_results(result, moe_eval.answers, settings)
    if not quiet:
        print(table)
        print(f"\nrouting plot: {plot}\nmodel (Hub folder): {model_dir}\ntimings (s): " + _format_timings(timings))
    return result


def _format_timings(timings: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items())


def _write_results(result: DemoResult, answers: list[dict], settings: DemoSettings) -> None:
    payload = {
        "accuracy": result.accuracy,
        "dense_accuracy": result.dense_accuracy,
        "majority_baseline": result.baseline,
        "routing_shares": result.routing_shares,
        "expert_order": list(EXPERT_ORDER),
        "timings_seconds": result.timings,
        "settings": asdict(settings),
        "torch_threads": torch.get_num_threads(),
        "answers": answers,
    }
    (result.output_dir / "results.json").write_text(json.dumps(payload, indent=1, default=str))
