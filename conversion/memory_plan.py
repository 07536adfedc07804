"""Memory plans for the released Uni-MoE models, computed on the meta device (nothing is allocated).

    unimoe-memory-plan [--experts 4 8] [--precision fp32 bf16 int8 int4]
                       [--max-memory 0=24GiB 1=24GiB cpu=64GiB] [--strategy auto] [--show-map]

prints, for each model and precision, the weight bytes of each component and, with
`--max-memory`, the device map `from_pretrained(device_map=STRATEGY, max_memory=...)` would
choose and the weight bytes it puts on each device. The GPUs need not exist here.

int8/int4 follow bitsandbytes' storage: every `nn.Linear` but `lm_head` is quantised (int8: one
byte per weight plus an fp32 scale per output row; NF4: half a byte per weight plus an fp32
absmax per 64-weight block), everything else stays bf16. Fused experts are 3D parameters, not
`nn.Linear`s, so they stay bf16 (`--layout fused` shows the cost). Activations and the KV cache
come on top (`kv_cache_bytes_per_token`).
"""

import argparse
import contextlib
import io
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.integrations.accelerate import get_balanced_memory, get_max_memory, infer_auto_device_map

from modeling_unimoe import UniMoeConfig, UniMoeForConditionalGeneration

PRECISIONS = ("fp32", "bf16", "int8", "int4")
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
NF4_BLOCK_SIZE = 64  # bitsandbytes' default 4-bit block: one fp32 absmax per 64 weights
GIB = 2**30


def released_config(num_experts: int, experts_layout: str = "per_expert", moe_layers: str = "all") -> UniMoeConfig:
    """The released 7B models: 4 experts (Uni-MoE-speech / -audio / v1.5, top-2 softmax over the
    two chosen logits) or 8 experts (Uni-MoE-v2 "8e", GShard top-2). `moe_layers="even"` is the
    layout of the audio and "interval" checkpoints (MoE in layers 0, 2, ..., dense MLPs between)."""
    text_config = {"experts_layout": experts_layout, "moe_layers": moe_layers}
    if num_experts == 8:
        text_config.update(num_experts=8, router_type="gshard_top2")
    elif num_experts != 4:
        raise ValueError(f"The released Uni-MoE models have 4 or 8 experts, got {num_experts}.")
    return UniMoeConfig(text_config=text_config)


def meta_model(config: UniMoeConfig, precision: str) -> UniMoeForConditionalGeneration:
    """`config`'s model on the meta device, its tensors laid out as loading at `precision` would."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    with torch.device("meta"):
        model = UniMoeForConditionalGeneration(config)
    model.to(torch.float32 if precision == "fp32" else torch.bfloat16)
    if precision in ("int8", "int4"):
        quantize_linears_on_meta(model, bits=8 if precision == "int8" else 4)
    return model


def quantize_linears_on_meta(model: UniMoeForConditionalGeneration, bits: int) -> None:
    """Gives every `nn.Linear` but the output head bitsandbytes' storage, as its quantiser would."""
    head = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, nn.Linear) and module is not head:
            _quantize_linear_on_meta(module, bits)


def _quantize_linear_on_meta(linear: nn.Linear, bits: int) -> None:
    """Replaces the weight by tensors of the sizes bitsandbytes stores (on meta)."""
    out_features, in_features = linear.weight.shape
    numel = out_features * in_features
    if bits == 8:  # Linear8bitLt: int8 weight + fp32 row scale (SCB)
        weight = torch.empty(out_features, in_features, dtype=torch.int8, device="meta")
        scale = torch.empty(out_features, dtype=torch.float32, device="meta")
    else:  # Linear4bit NF4: two weights per uint8 + fp32 absmax per block
        weight = torch.empty((numel + 1) // 2, 1, dtype=torch.uint8, device="meta")
        scale = torch.empty(math.ceil(numel / NF4_BLOCK_SIZE), dtype=torch.float32, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.register_buffer("quant_scale", scale)


def tensor_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of every parameter and buffer, by full name (persistent or not: both take memory)."""
    sizes = {name: t.numel() * t.element_size() for name, t in model.named_parameters()}
    sizes.update({name: t.numel() * t.element_size() for name, t in model.named_buffers()})
    return sizes


def component_of(name: str) -> str:
    """The component a tensor belongs to, for the summary table."""
    if ".mlp.experts." in name:
        return "experts"
    if ".mlp.gate." in name:
        return "routers"
    if name.startswith("model.layers."):
        return "attention+norms+dense MLP"
    if name.startswith(("model.embed_tokens", "lm_head", "model.norm", "model.rotary_emb")):
        return "embeddings+lm_head"
    return "encoders+connectors"


@dataclass
class MemoryPlan:
    """Weight memory of one model at one precision, and optionally its device placement."""

    name: str
    precision: str
    num_parameters: int
    total_bytes: int
    components: dict[str, int]
    expert_bytes: int  # one expert of one layer
    kv_cache_bytes_per_token: int  # keys + values of all layers, at the compute dtype
    device_map: dict[str, int | str] = field(default_factory=dict)
    device_bytes: dict[int | str, int] = field(default_factory=dict)
    experts_per_device: dict[int | str, int] = field(default_factory=dict)


def plan_memory(
    config: UniMoeConfig,
    precision: str,
    max_memory: dict[int | str, int | str] | None = None,
    strategy: str = "auto",
    name: str = "",
) -> MemoryPlan:
    """The weight memory of `config`'s model at `precision`; with `max_memory`, also the device map
    `from_pretrained(device_map=strategy, max_memory=max_memory)` would choose for it."""
    model = meta_model(config, "fp32" if precision == "fp32" else "bf16")
    num_parameters = sum(param.numel() for param in model.parameters())
    if precision in ("int8", "int4"):
        quantize_linears_on_meta(model, bits=8 if precision == "int8" else 4)
    sizes = tensor_bytes(model)
    components = defaultdict(int)
    for tensor_name, size in sizes.items():
        components[component_of(tensor_name)] += size
    text = config.text_config
    first_moe = text.moe_layer_indices[0] if text.moe_layer_indices else None
    expert_prefix = f"model.layers.{first_moe}.mlp.experts."
    expert_total = sum(size for tensor_name, size in sizes.items() if tensor_name.startswith(expert_prefix))
    compute_bytes = 4 if precision == "fp32" else 2
    plan = MemoryPlan(
        name=name,
        precision=precision,
        num_parameters=num_parameters,
        total_bytes=sum(sizes.values()),
        components=dict(components),
        expert_bytes=expert_total // text.num_experts if first_moe is not None else 0,
        kv_cache_bytes_per_token=2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * compute_bytes,
    )
    if max_memory is not None:
        plan.device_map = device_map_for(model, max_memory, strategy, quantized=precision in ("int8", "int4"))
        plan.device_bytes, plan.experts_per_device = _placement(plan.device_map, sizes, text.num_experts)
    return plan


def device_map_for(
    model: nn.Module, max_memory: dict[int | str, int | str], strategy: str = "auto", quantized: bool = False
) -> dict[str, int | str]:
    """The device map `from_pretrained(device_map=strategy, max_memory=...)` computes (the steps of
    `transformers.integrations.accelerate._get_device_map`), on a meta model."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
    no_split = model._no_split_modules
    # accelerate warns once per GPU id that this machine lacks: planning for GPUs elsewhere is the point.
    with _quiet():
        if strategy == "sequential":
            budget = get_max_memory(max_memory)
        else:
            budget = get_balanced_memory(
                model, max_memory=max_memory, no_split_module_classes=no_split, low_zero=strategy == "balanced_low_0"
            )
        if quantized:  # bitsandbytes' quantizers keep 10% for quantisation buffers
            budget = {device: size * 0.9 for device, size in budget.items()}
        return infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split)


@contextlib.contextmanager
def _quiet():
    loggers = [logging.getLogger(name) for name in ("accelerate", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _placement(
    device_map: dict[str, int | str], sizes: dict[str, int], num_experts: int
) -> tuple[dict[int | str, int], dict[int | str, int]]:
    """Weight bytes and whole experts on each device of `device_map`."""
    device_bytes = defaultdict(int)
    experts = defaultdict(int)
    prefixes = sorted(device_map, key=len, reverse=True)  # most specific entry first
    for tensor_name, size in sizes.items():
        owner = next(p for p in prefixes if p == "" or tensor_name == p or tensor_name.startswith(p + "."))
        device_bytes[device_map[owner]] += size
        if tensor_name.endswith(".down_proj.weight") and ".mlp.experts." in tensor_name:
            experts[device_map[owner]] += 1  # one down_proj per expert (per-expert layout)
        elif tensor_name.endswith(".mlp.experts.down_proj"):
            experts[device_map[owner]] += num_experts  # fused: the whole layer's experts
    return dict(device_bytes), dict(experts)


def parse_memory(text: str) -> int:
    """`24GiB`, `500MB`, `1e9` → bytes."""
    units = {
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
    }
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)]) * factor)
    try:
        return int(float(upper))
    except ValueError:
        raise ValueError(f"Cannot read a memory size from {text!r}: use e.g. 24GiB, 500MB or a byte count.") from None


def parse_max_memory(items: list[str]) -> dict[int | str, int]:
    """`["0=24GiB", "cpu=64GiB", "disk=1TB"]` → `{0: ..., "cpu": ..., "disk": ...}`."""
    max_memory = {}
    for item in items:
        device, sep, size = item.partition("=")
        if not sep:
            raise ValueError(f"--max-memory takes DEVICE=SIZE pairs (0=24GiB cpu=64GiB), got {item!r}.")
        max_memory[int(device) if device.isdigit() else device] = parse_memory(size)
    return max_memory


def format_plans(plans: list[MemoryPlan]) -> str:
    lines = [
        "| model | precision | params | weights | experts | one expert | rest of LM | encoders | KV cache / 1k tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        experts = p.components.get("experts", 0)
        encoders = p.components.get("encoders+connectors", 0)
        rest = p.total_bytes - experts - encoders
        lines.append(
            f"| {p.name} | {p.precision} | {p.num_parameters / 1e9:.2f} B | {_gib(p.total_bytes)} | {_gib(experts)} | "
            f"{_gib(p.expert_bytes)} | {_gib(rest)} | {_gib(encoders)} | {_gib(1000 * p.kv_cache_bytes_per_token)} |"
        )
    for p in plans:
        if p.device_bytes:
            placed = ", ".join(
                f"{device}: {_gib(size)} ({p.experts_per_device.get(device, 0)} experts)"
                for device, size in p.device_bytes.items()
            )
            lines.append(f"\n{p.name} {p.precision}: {placed}")
    return "\n".join(lines)


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / GIB:.2f} GiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[4, 8], choices=[4, 8])
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--layout", default="per_expert", choices=["per_expert", "fused"])
    parser.add_argument("--moe-layers", default="all", choices=["all", "even"], help="even: audio/interval checkpoints")
    parser.add_argument(
        "--max-memory", nargs="+", metavar="DEVICE=SIZE", help="e.g. 0=24GiB 1=24GiB cpu=64GiB disk=1TB"
    )
    parser.add_argument("--strategy", default="auto", choices=STRATEGIES)
    parser.add_argument("--show-map", action="store_true", help="print the device map too")
    args = parser.parse_args(argv)
    max_memory = parse_max_memory(args.max_memory) if args.max_memory else None
    plans = [
        plan_memory(
            released_config(num_experts, args.layout, args.moe_layers),
            precision,
            max_memory=max_memory,
            strategy=args.strategy,
            name=f"Uni-MoE {num_experts}e",
        )
        for num_experts in args.experts
        for precision in args.precision
    ]
    print(format_plans(plans))
    if args.show_map:
        for p in plans:
            print(f"\n{p.name} {p.precision} device map:")
            for module_name, device in p.device_map.items():
                print(f"  {module_name}: {device}")


if __name__ == "__main__":
    main()
