"""Per-benchmark presets: prompt suffix, generation settings, metric and the paper column.

Generation follows the official `eval.py` (docs/official_unimoe.md §3): the `vqa` / `mmbench`
data types decode greedily with at most 512 new tokens, the `video` type (and every other type
in the speech code) samples at temperature 0.2 with 1024, and Clotho captioning samples with 5
beams, temperature 1.0, at least 10 and at most 512 new tokens. The official image eval files
end every question with `VQA_SUFFIX`. Every field can be overridden on the command line.
"""

import dataclasses
from dataclasses import dataclass

from .generation import GREEDY, SAMPLE_T02, GenerationSettings

VQA_SUFFIX = "\nAnswer the question using a single word or phrase."

# What `voice` files are: all speech (Whisper), all general audio (BEATs), or each file what its
# placeholder says (`<speech>` / `<audio>`, in prompt order), as in data mixing both.
VOICE_AS = ("speech", "audio", "placeholder")
# Scorers a task may name; see `scoring.py`.
METRICS = ("vqa", "aokvqa", "choice", "pope", "exact_match", "caption", "external")


@dataclass(frozen=True)
class TaskPreset:
    name: str
    title: str
    metric: str
    modality: str  # the task's main input: image, video, speech or audio
    prompt_suffix: str = ""
    generation: GenerationSettings = GREEDY
    paper_column: str | None = None  # column of the paper's Table 9, if the task has one
    extra_column: str | None = None  # a column printed after the paper's, for tasks outside it
    subsets: tuple[str, ...] = ()  # the paper's column shows these per-subset scores as "a/b"
    voice_as: str = "speech"  # what an official `voice` file / `<audio>` placeholder is (see VOICE_AS)
    submission: str | None = None  # export format for an external scorer
    note: str = ""

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name!r}: unknown metric {self.metric!r}, expected one of {METRICS}")
        if self.voice_as not in VOICE_AS:
            raise ValueError(f"task {self.name!r}: voice_as must be one of {VOICE_AS}, got {self.voice_as!r}")

    @property
    def table_column(self) -> str | None:
        return self.paper_column or self.extra_column

    def replace(self, **overrides) -> "TaskPreset":
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


_CLOTHO_GENERATION = GenerationSettings(
    max_new_tokens=512, do_sample=True, temperature=1.0, num_beams=5, length_penalty=1.0, min_new_tokens=10
)
_GPT_JUDGED = "the paper's number is GPT-judged; offline we report normalised exact match, not comparable"

TASKS: dict[str, TaskPreset] = {
    t.name: t
    for t in (
        TaskPreset("aokvqa", "A-OKVQA (val, direct answer)", "aokvqa", "image", VQA_SUFFIX, paper_column="AOK"),
        TaskPreset("okvqa", "OK-VQA (val)", "vqa", "image", VQA_SUFFIX, paper_column="OK"),
        TaskPreset(
            "vqav2",
            "VQAv2 (test-dev via the EvalAI server; val scored locally)",
            "vqa",
            "image",
            VQA_SUFFIX,
            paper_column="VQAv2",
            submission="vqav2",
        ),
        TaskPreset("textvqa", "TextVQA (val)", "vqa", "image", VQA_SUFFIX),
        TaskPreset(
            "mmbench", "MMBench (dev)", "choice", "image", VQA_SUFFIX, paper_column="MMB", note="no circular evaluation"
        ),
        TaskPreset(
            "pope",
            "POPE (F1, mean over random/popular/adversarial)",
            "pope",
            "image",
            VQA_SUFFIX,
            paper_column="POPE",
        ),
        TaskPreset("seed_image", "SEED-Bench (image)", "choice", "image", VQA_SUFFIX, paper_column="SEED"),
        TaskPreset(
            "mmvet",
            "MM-Vet",
            "external",
            "image",
            paper_column="MMVet",
            submission="mmvet",
            note="scored by the official GPT-4 grader from the exported predictions",
        ),
        TaskPreset(
            "race_audio",
            "RACE-Audio",
            "choice",
            "speech",
            paper_column="RAudio",
            subsets=("middle", "high"),
            note="sub-scores assumed to be RACE's middle/high splits",
        ),
        TaskPreset(
            "ehsl",
            "English High School Listening (long / short)",
            "choice",
            "speech",
            paper_column="EHSL",
            subsets=("long", "short"),
        ),
        TaskPreset("mmbench_audio", "MMBench-Audio (spoken questions)", "choice", "speech", VQA_SUFFIX),
        TaskPreset(
            "activitynet_qa",
            "ActivityNet-QA",
            "exact_match",
            "video",
            generation=SAMPLE_T02,
            paper_column="AN-QA",
            note=_GPT_JUDGED,
        ),
        TaskPreset("msvd_qa", "MSVD-QA", "exact_match", "video", generation=SAMPLE_T02, note=_GPT_JUDGED),
        # The official audio eval.py meant beams 4 / T 0.9 here, but a trailing `else` overwrites it.
        TaskPreset("clothoaqa", "ClothoAQA", "exact_match", "audio", generation=SAMPLE_T02, voice_as="audio"),
        TaskPreset(
            "clotho_v1", "Clotho v1 captioning", "caption", "audio", generation=_CLOTHO_GENERATION, voice_as="audio"
        ),
        TaskPreset(
            "clotho_v2", "Clotho v2 captioning", "caption", "audio", generation=_CLOTHO_GENERATION, voice_as="audio"
        ),
        TaskPreset(
            "synthetic",
            "unimoe-demo's synthetic task (held-out split, exact match per modality)",
            "exact_match",
            "image",
            generation=GenerationSettings(max_new_tokens=8),
            extra_column="Synthetic",
            subsets=("image", "video", "speech", "audio", "mixed"),
            voice_as="placeholder",
            note="`unimoe-demo` writes it: DIR/data/test.json; subsets are the item modalities",
        ),
    )
}


def get_task(name: str) -> TaskPreset:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
