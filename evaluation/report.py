"""The paper's Table 9 (Uni-MoE, arXiv 2405.11273) and a printer for tables in its layout.

Numbers as transcribed in docs/official_unimoe.md §6 ("–" = not reported). RAudio and EHSL
cells hold two sub-scores ("a/b"); EHSL's are long/short.
"""

from collections.abc import Mapping, Sequence

PAPER_COLUMNS = ("AOK", "OK", "VQAv2", "MMB", "POPE", "SEED", "MMVet", "RAudio", "EHSL", "AN-QA")

_ROWS = """
Macaw-LLM                  | 1.90 5.70 20.73 3.84 – – – 4.04/3.00 0.67/2.00 –
X-InstructBLIP             | 21.52 30.61 37.77 8.96 – – – 16.33/18.88 0.67/2.00 –
AnyMAL-70B                 | – 42.6 64.2 – – – – – – –
IDEFICS-80B                | – – 60.0 54.5 – – – – – –
LLaVA-1.5-7B               | 70.92 55.09 75.9 72.2 85.9 – 30.5 – – –
LLaVA-1.5-13B              | 73.54 61.93 78.9 73.0 85.9 – 35.4 – – –
BLIP-2-11B                 | 39.06 53.7 65.0 – 85.3 – – – – –
InstructBLIP-13B           | 58.30 41.02 – – 50.7 25.6 – – – –
Shikra-13B                 | – – 77.4 58.8 – – – – – –
LLaMA-VID-13B              | – – 80.0 66.6 86.0 62.3 – – – 47.5
MiniGPT-4-7B               | 36.06 29.31 – 23.0 – 42.84 22.1 – – –
LLaMA-Adapter-v2-7B        | – – – 39.5 – – 31.4 – – –
Qwen-VL-7B                 | – 58.6 78.8 68.2 – 56.3 – – – –
MobileVLM-3B               | – – – 59.6 84.9 – – – – –
LLaVA-Phi-3B               | – – 71.4 59.8 85.0 – 28.9 – – –
Single-Expert-Task2 (I,T)  | 67.07 62.91 75.18 71.26 84.7 60.63 27.8 – – –
Single-Expert-Task5 (I,T,S) | 58.86 56.01 67.35 65.80 62.48 53.50 26.9 30.78/24.90 9.33/12.00 –
Single-Expert-Task6 (I,T,S) | 58.69 57.77 68.74 67.53 65.84 55.21 25.6 32.59/29.02 18.67/8.00 –
MoE-LLaVA-1.6Bx4           | 63.8 59.9 74.1 69.1 85.7 61.8 28.0 – – –
MoE-LLaVA-2.7Bx4           | 68.34 62.10 75.4 70.0 85.5 62.3 31.2 – – –
Uni-MoE Task1 4E (I,T,S)   | 61.22 57.63 68.42 68.15 76.67 56.58 30.1 47.08/47.08 41.33/36.00 –
Uni-MoE Task2 4E (I,T,S,V) | 65.07 62.10 73.87 70.50 85.43 60.54 28.2 49.65/49.37 42.00/48.00 42.2
Uni-MoE Task3 4E (I,T,A,V) | 64.28 61.96 73.87 69.82 86.10 59.16 31.7 – – 42.8
Uni-MoE Task4 4E (I,T,S,V) | 70.22 66.02 76.4 73.2 86.0 63.4 32.6 64.21/64.72 48.00/58.67 45.6
Uni-MoE Task4 4E + Aux_loss | 69.61 66.13 76.0 72.6 85.0 63.3 31.7 63.86/64.24 50.00/54.00 45.2
Uni-MoE Task4 8E (I,T,S,V) | 70.0 66.2 76.6 73.0 86.2 63.3 32.5 63.75/61.56 48.67/46.0 46.0
Uni-MoE Task4 8E + Aux_loss | 70.7 66.4 76.7 73.2 86.3 63.4 32.8 62.33/64.18 42.00/50.00 46.4
"""


def _parse_rows(text: str) -> dict[str, dict[str, str]]:
    rows = {}
    for line in text.strip().splitlines():
        name, cells = (part.strip() for part in line.split("|"))
        values = cells.split()
        if len(values) != len(PAPER_COLUMNS):
            raise RuntimeError(f"Table 9 row {name!r} has {len(values)} cells, expected {len(PAPER_COLUMNS)}")
        rows[name] = dict(zip(PAPER_COLUMNS, values))
    return rows


PAPER_TABLE9: dict[str, dict[str, str]] = _parse_rows(_ROWS)
# The released checkpoints' rows (README: speech-e2 = MoE-Task2, audio-e2 = MoE-Task3; v2-e2 is
# inferred to be Task4 8E + Aux_loss).
UNIMOE_ROWS = tuple(name for name in PAPER_TABLE9 if name.startswith("Uni-MoE"))


def format_table(rows: Sequence[tuple[str, Mapping[str, str]]], columns: Sequence[str] = PAPER_COLUMNS) -> str:
    """A Markdown table: one row per (name, {column: cell}); missing cells print "–"."""
    header = ["model", *columns]
    body = [[name, *(str(cells.get(c, "–")) for c in columns)] for name, cells in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in body)])


def comparison_table(ours: Mapping[str, Mapping[str, str]], reference_rows: Sequence[str] | None = UNIMOE_ROWS) -> str:
    """Our rows ({name: {column: cell}}) under the paper's chosen reference rows; columns outside
    the paper's (tasks it did not report) follow its ten."""
    reference = [(f"{name} (paper)", PAPER_TABLE9[name]) for name in (reference_rows or ())]
    extra = [c for cells in ours.values() for c in cells if c not in PAPER_COLUMNS]
    return format_table([*reference, *ours.items()], (*PAPER_COLUMNS, *dict.fromkeys(extra)))
