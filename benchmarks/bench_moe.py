"""Uni-MoE's sparse MoE block vs a dense SwiGLU MLP with the same active FLOPs and vs
`transformers`' MixtralSparseMoeBlock (its fastest experts implementation), on CPU.

    python benchmarks/bench_moe.py [--tokens 1 64 512 2048] [--repeats 3] [--passes fwd fwd+bwd] [--hidden 4096 --intermediate 11008]

Every row is measured in this one run, the three modules interleaved repeat by repeat (5x the
repeats below 512 tokens) and the median kept, so the printed ratios compare like with like.
Peak memory is the growth of the process's peak resident set over one call (Linux `VmHWM`, reset
through `/proc/self/clear_refs`).
All three modules share the same expert weights, and all route every token to the same experts.
"""

import os

# Back large tensors with transparent huge pages. Without them a GEMV's speed depends on where the
# kernel happened to place each weight's pages: the same 1-token expert ran 4-8 % apart on two
# copies of the same weights, more than the differences measured here.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from transformers import MixtralConfig
from transformers.models.llama.modeling_llama import LlamaMLP
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from modeling_unimoe.moe import UniMoeSparseMoeBlock
from unimoe_conversion.tiny_checkpoint import tiny_config


def resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_once(module: nn.Module, x: torch.Tensor, backward: bool) -> tuple[float, float]:
    """Seconds and peak extra MiB of one forward (and backward)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = resident_kib("VmRSS")
    start = time.perf_counter()
    if backward:
        x = x.detach().requires_grad_(True)
        module(x).square().mean().backward()  # square: a contiguous, non-trivial upstream gradient
    else:
        with torch.inference_mode():
            module(x)
    seconds = time.perf_counter() - start
    peak = (resident_kib("VmHWM") - before) / 1024
    module.zero_grad(set_to_none=True)
    return seconds, peak


def build_modules(hidden: int, intermediate: int, num_experts: int, top_k: int) -> dict[str, nn.Module]:
    config = tiny_config(
        vision=False,
        speech=False,
        audio=False,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_experts=num_experts,
        num_experts_per_tok=top_k,
    ).text_config
    ours = UniMoeSparseMoeBlock(config)
    for param in ours.parameters():
        nn.init.normal_(param, std=0.02)

    mixtral_config = MixtralConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_local_experts=num_experts, num_experts_per_tok=top_k
    )
    mixtral_config._experts_implementation = "eager"
    mixtral = MixtralSparseMoeBlock(mixtral_config)
    with torch.no_grad():
        mixtral.gate.weight.copy_(ours.gate.weight)
        mixtral.experts.gate_up_proj.copy_(
            torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in ours.experts])
        )
        mixtral.experts.down_proj.copy_(torch.stack([e.down_proj.weight for e in ours.experts]))

    # Same active FLOPs: each token runs k experts of width I, i.e. one SwiGLU of width k·I.
    dense = LlamaMLP(
        tiny_config(
            vision=False, speech=False, audio=False, hidden_size=hidden, intermediate_size=top_k * intermediate
        ).text_config
    )
    return {"unimoe": ours, "dense": dense, "mixtral": mixtral}


def fastest_mixtral_implementation(mixtral: MixtralSparseMoeBlock, x: torch.Tensor, repeats: int) -> str:
    """Times Mixtral's experts implementations on `x` (forward) and keeps the fastest."""
    num_routed = x.shape[1] * mixtral.top_k
    candidates = ["eager", "grouped_mm"]
    # batched_mm gathers one (2I, H) weight copy per routed token: only viable for a few tokens.
    if num_routed * mixtral.experts.gate_up_proj[0].numel() * x.element_size() < 2**31:
        candidates.append("batched_mm")
    timings = {}
    for implementation in candidates:
        mixtral.experts.config._experts_implementation = implementation
        run_once(mixtral, x, backward=False)
        timings[implementation] = min(run_once(mixtral, x, backward=False)[0] for _ in range(repeats))
    best = min(timings, key=timings.get)
    mixtral.experts.config._experts_implementation = best
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 64, 512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    modules = build_modules(args.hidden, args.intermediate, args.experts, args.top_k)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, hidden {args.hidden}, "
        f"intermediate {args.intermediate}, {args.experts} experts, top-{args.top_k}"
    )
    print("Mixtral uses, per token count, the fastest of its experts implementations (forward).\n")
    print(
        "| tokens | pass | unimoe ms | dense ms | mixtral ms (impl) | unimoe/dense | unimoe/mixtral "
        "| peak MiB unimoe / dense / mixtral |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for num_tokens in args.tokens:
        x = torch.randn(1, num_tokens, args.hidden)
        implementation = fastest_mixtral_implementation(modules["mixtral"], x, args.repeats)
        for backward in [name == "fwd+bwd" for name in args.passes]:
            times = {name: [] for name in modules}
            peaks = {name: 0.0 for name in modules}
            repeats = args.repeats
            if num_tokens < 512:
                # Sub-second rows: warm up, and take 5x the samples, since their ratios otherwise
                # move by a few per cent between runs. At larger sizes the GEMMs dwarf both.
                repeats *= 5
                for module in modules.values():
                    run_once(module, x, backward)
            for _ in range(repeats):
                for name, module in modules.items():
                    seconds, peak = run_once(module, x, backward)
                    times[name].append(seconds)
                    peaks[name] = max(peaks[name], peak)
            ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
            print(
                f"| {num_tokens} | {'fwd+bwd' if backward else 'fwd'} | {ms['unimoe']:.1f} | {ms['dense']:.1f} | "
                f"{ms['mixtral']:.1f} ({implementation}) | {ms['unimoe'] / ms['dense']:.2f} | {ms['unimoe'] / ms['mixtral']:.2f} | "
                f"{peaks['unimoe']:.0f} / {peaks['dense']:.0f} / {peaks['mixtral']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
