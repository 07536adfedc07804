"""The demo's results: a text table and a PNG of the routing shares (drawn with Pillow)."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .synthetic_task import MODALITIES, SINGLE_MODALITIES


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def accuracy_table(
    moe: dict[str, float],
    dense: dict[str, dict[str, float]],
    baseline: dict[str, float],
    counts: dict[str, int],
) -> str:
    """Markdown table: per modality the majority-answer baseline, the dense stage-2 model of that
    modality (mixed: the best of the four and which), and the MoE.

    Args:
        moe: modality -> exact match of the stage-3 MoE.
        dense: expert modality -> (test modality -> exact match) of its stage-2 dense model.
        baseline: modality -> exact match of always answering the most common training answer.
        counts: modality -> number of held-out questions.
    """
    lines = [
        "| held-out questions | n | majority answer | dense stage-2 model | Uni-MoE (stage 3) |",
        "|---|---|---|---|---|",
    ]
    for modality in MODALITIES:
        if modality not in moe:
            continue
        if modality == "mixed":
            scores = {expert: acc["mixed"] for expert, acc in dense.items() if "mixed" in acc}
            best = max(scores, key=scores.get) if scores else None
            dense_cell = f"{_pct(scores[best])} (best: {best} expert)" if best else "-"
        else:
            dense_cell = _pct(dense.get(modality, {}).get(modality))
        lines.append(
            f"| {modality} | {counts.get(modality, 0)} | {_pct(baseline.get(modality))} | {dense_cell} | {_pct(moe[modality])} |"
        )
    return "\n".join(lines)


def routing_table(shares: dict[str, np.ndarray], expert_names: Sequence[str]) -> str:
    """Markdown table: per modality, each expert's share of the top-k choices on media tokens
    (mean over MoE layers)."""
    header = "| media tokens of | " + " | ".join(f"expert {k} ({name})" for k, name in enumerate(expert_names)) + " |"
    lines = [header, "|---|" + "---|" * len(expert_names)]
    for modality in MODALITIES:
        if modality in shares:
            row = shares[modality].mean(axis=0)
            lines.append(f"| {modality} | " + " | ".join(_pct(v) for v in row) + " |")
    return "\n".join(lines)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def plot_routing(shares: dict[str, np.ndarray], expert_names: Sequence[str], path: str | Path) -> Path:
    """A heat map per MoE layer: rows = modality of the media tokens, columns = experts, cell =
    share of the top-k choices (darker = more). Written as PNG with Pillow."""
    modalities = [m for m in MODALITIES if m in shares]
    num_layers = next(iter(shares.values())).shape[0]
    cell, left, top, gap = 64, 90, 70, 40
    panel_width = cell * len(expert_names)
    width = left + num_layers * (panel_width + gap) + 10
    height = top + cell * len(modalities) + 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    title, small = _font(16), _font(12)
    draw.text((10, 8), "Expert routing of media tokens (share of top-k choices)", fill="black", font=title)
    for layer in range(num_layers):
        x0 = left + layer * (panel_width + gap)
        draw.text((x0, 32), f"MoE layer {layer}", fill="black", font=small)
        for col, name in enumerate(expert_names):
            draw.text((x0 + col * cell + 4, top - 18), f"E{col} {name[:6]}", fill="black", font=small)
        for row, modality in enumerate(modalities):
            if layer == 0:
                draw.text((10, top + row * cell + cell // 2 - 6), modality, fill="black", font=small)
            for col in range(len(expert_names)):
                value = float(shares[modality][layer, col])
                shade = int(255 * (1 - value))
                box = (x0 + col * cell, top + row * cell, x0 + (col + 1) * cell - 2, top + (row + 1) * cell - 2)
                draw.rectangle(box, fill=(shade, shade, 255))
                colour = "white" if value > 0.5 else "black"
                draw.text((box[0] + 16, box[1] + cell // 2 - 8), f"{100 * value:.0f}%", fill=colour, font=small)
    note = "uniform routing = 25% per expert; each expert starts as the stage-2 MLP of the modality it is named after"
    draw.text((10, height - 30), note, fill="gray", font=small)
    path = Path(path)
    image.save(path)
    return path


__all__ = ["SINGLE_MODALITIES", "accuracy_table", "plot_routing", "routing_table"]
