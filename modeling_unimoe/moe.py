"""The sparse Mixture-of-Experts MLP of Uni-MoE: router, experts, block.

    hidden (T, H) ──► UniMoeRouter ──► top_k_index (T, k), top_k_weights (T, k)
          │                                   │
          └──► sort the T·k (token, slot) pairs by expert ──► one GEMM chain per expert
                                                             on its contiguous slice
                                                  ──► unsort, weight, sum the k slots ──► (T, H)

By default experts are one `nn.Module` each (`UniMoeExperts`), so state-dict keys match the
official checkpoints (`mlp.gate.weight`, `mlp.experts.{k}.{gate,up,down}_proj.weight`),
Accelerate device maps can place single experts on different devices, and bitsandbytes/PEFT see
plain `nn.Linear`s. The optional fused layout (`UniMoeFusedExperts` in `modeling_unimoe.py`)
plugs into the same block through the experts contract.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaMLP

from .configuration_unimoe import UniMoeTextConfig


class UniMoeMLP(LlamaMLP):
    """SwiGLU MLP: the dense MLP of the layers without MoE, and the base of each expert."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        projections = (self.gate_proj, self.up_proj, self.down_proj)
        on_cpu_fp32 = hidden_states.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
        if not (on_cpu_fp32 and all(map(is_plain_fp32_linear, projections))):
            return super().forward(hidden_states)
        # CPU BLAS runs fp32 `W @ xᵀ` up to 1.8x faster than `x @ Wᵀ` when x has few rows, as
        # an expert's slice has (one 7B-size SwiGLU on 2 cores: 0.14 s against 0.26 s for 32
        # rows, 3.4 s against 3.6 s for 1024), so the MLP computes in the transposed space.
        # Wrapped projections (PEFT, bitsandbytes, Accelerate hooks), bf16 and autocast keep
        # `F.linear`: CPU bf16 runs the transposed product 2-3x slower.
        # A contiguous xᵀ keeps the result as independent of the weights' memory alignment as
        # `F.linear`'s (MKL picks its kernel by alignment): save/reload round trips stay bitwise.
        transposed = hidden_states.reshape(-1, hidden_states.shape[-1]).t().contiguous()
        hidden = self.act_fn(self.gate_proj.weight @ transposed) * (self.up_proj.weight @ transposed)
        return (self.down_proj.weight @ hidden).t().reshape(*hidden_states.shape[:-1], -1)


class UniMoeExpert(UniMoeMLP):
    """One expert: a SwiGLU MLP with `gate_proj`, `up_proj`, `down_proj`."""


def is_plain_fp32_linear(module: nn.Module) -> bool:
    """An `nn.Linear` itself (not a PEFT/bitsandbytes subclass), fp32, bias-free and hook-free,
    whose weight can therefore be multiplied directly."""
    return (
        type(module) is nn.Linear
        and module.bias is None
        and module.weight.dtype == torch.float32
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and not hasattr(module, "_hf_hook")
    )


class UniMoeRouter(nn.Module):
    """Linear router over the experts; returns `(router_logits, top_k_weights, top_k_index)`.

    Two official routers (`config.router_type`):
    - `topk_softmax` (4-expert models): top-k of the logits, softmax over the k selected
      logits in fp32. This equals renormalising the top-k of a softmax over all experts.
    - `gshard_top2` (8-expert DeepSpeed models): logits in fp32, softmax over all experts,
      top-2 renormalised. In training the second expert is drawn as DeepSpeed does, the argmax
      of Gumbel-noised logits outside the first choice; at inference it is the plain argmax
      (DeepSpeed also adds the noise at inference, which makes its outputs non-deterministic).
    """

    def __init__(self, config: UniMoeTextConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.router_type = config.router_type
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.router_type == "gshard_top2":
            router_logits = F.linear(hidden_states.float(), self.weight.float())  # (T, E)
            probs = router_logits.softmax(dim=-1)
            if self.training:
                first = router_logits.argmax(dim=-1, keepdim=True)
                noisy = router_logits - torch.empty_like(router_logits).exponential_().log()  # + Gumbel(0, 1)
                second = noisy.scatter(-1, first, float("-inf")).argmax(dim=-1, keepdim=True)
                top_k_index = torch.cat([first, second], dim=-1)
            else:
                top_k_index = router_logits.topk(2, dim=-1).indices
            top_k_weights = probs.gather(-1, top_k_index)
            top_k_weights = top_k_weights / top_k_weights.sum(dim=-1, keepdim=True).clamp_min(
                torch.finfo(probs.dtype).eps
            )
        else:
            router_logits = F.linear(hidden_states, self.weight)  # (T, E)
            top_k_logits, top_k_index = router_logits.topk(self.top_k, dim=-1)
            top_k_weights = top_k_logits.float().softmax(dim=-1)
        return router_logits, top_k_weights, top_k_index


def expert_execution_device(expert: nn.Module, default: torch.device) -> torch.device | int | str:
    """Where `expert` computes: its Accelerate hook's execution device (CPU/disk-offloaded
    weights live on `meta` until the hook brings them there), else the device of its weights."""
    device = getattr(getattr(expert, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return device
    param = next(expert.parameters(), None)
    return default if param is None else param.device


def dispatch_to_experts(
    hidden_states: torch.Tensor,
    top_k_weights: torch.Tensor,
    top_k_index: torch.Tensor,
    experts: Sequence[Callable[[torch.Tensor], torch.Tensor]],
) -> torch.Tensor:
    """Weighted sum of each token's k experts: `out[t] = Σ_j w[t, j] · expert_{idx[t, j]}(x[t])`.

    The T·k (token, slot) pairs are sorted by expert so that each expert runs one GEMM chain on
    one contiguous slice. Each expert gets only its slice, on its execution device (Accelerate
    device map, CPU/disk offload), and its result comes back to this device. Ids beyond the
    experts given (expert parallelism marks the experts of other ranks so) contribute zero.

    Args:
        hidden_states: (T, H) tokens.
        top_k_weights: (T, k) combine weights.
        top_k_index: (T, k) expert ids.
        experts: one callable (T_e, H) -> (T_e, H) per expert id.
    """
    num_tokens, top_k = top_k_index.shape
    if num_tokens == 1:  # decoding: the k experts run in slot order, nothing to sort
        outputs = [run_expert(experts, expert_id, hidden_states) for expert_id in top_k_index[0].tolist()]
        per_slot = torch.cat(outputs).view(1, top_k, -1)
    else:
        flat_index = top_k_index.reshape(-1)  # (T·k,)
        order = flat_index.argsort(stable=True)
        counts = torch.bincount(flat_index, minlength=len(experts)).tolist()  # one host sync per layer
        sorted_inputs = hidden_states[order // top_k]  # (T·k, H), grouped by expert
        outputs = [
            run_expert(experts, expert_id, chunk)
            for expert_id, chunk in enumerate(sorted_inputs.split(counts))
            if chunk.shape[0] > 0
        ]
        # Undo the sort with a gather rather than a scatter-add: CPU `index_add_` is slow and
        # non-deterministic on GPU, while every token has exactly k slots to sum.
        per_slot = torch.cat(outputs)[order.argsort()].view(num_tokens, top_k, -1)
    return (per_slot * top_k_weights[..., None].to(per_slot.dtype)).sum(dim=1)


def run_expert(
    experts: Sequence[Callable[[torch.Tensor], torch.Tensor]], expert_id: int, tokens: torch.Tensor
) -> torch.Tensor:
    """`experts[expert_id](tokens)` on the expert's execution device, returned on `tokens`' device;
    zeros for an id beyond `experts`."""
    if expert_id >= len(experts):
        return torch.zeros_like(tokens)
    expert = experts[expert_id]
    if isinstance(expert, nn.Module):
        return expert(tokens.to(expert_execution_device(expert, tokens.device))).to(tokens.device)
    return expert(tokens)


class UniMoeExperts(nn.ModuleList):
    """The experts of one MoE layer as one `UniMoeExpert` each (`experts_layout="per_expert"`).

    State-dict keys are the official `experts.{k}.{gate,up,down}_proj.weight`; each expert is a
    unit of Accelerate device maps and its projections are plain `nn.Linear`s.
    """

    def __init__(self, config: UniMoeTextConfig):
        super().__init__([UniMoeExpert(config) for _ in range(config.num_experts)])

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        return dispatch_to_experts(hidden_states, top_k_weights, top_k_index, self)


class UniMoeSparseMoeBlock(nn.Module):
    """Router (`gate`) + experts; a drop-in for the dense MLP of a decoder layer.

    `experts` is any module with the transformers 5.x experts contract
    `forward(hidden (T, H), top_k_index (T, k), top_k_weights (T, k)) -> (T, H)`; by default
    `UniMoeExperts`, one module per expert.
    """

    def __init__(self, config: UniMoeTextConfig, experts: nn.Module | None = None):
        super().__init__()
        self.gate = UniMoeRouter(config)
        self.experts = UniMoeExperts(config) if experts is None else experts

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        _, top_k_weights, top_k_index = self.gate(flat)
        # A device map may run the router on another device than the residual stream.
        top_k_weights, top_k_index = top_k_weights.to(flat.device), top_k_index.to(flat.device)
        return self.experts(flat, top_k_index, top_k_weights).view_as(hidden_states)


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...],
    top_k: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Switch-Transformer load-balancing loss, summed over MoE layers.

    Per layer (Switch Transformer, eqs. 4–6; GShard's `l_aux` as DeepSpeed computes it):

        loss_l = E · Σ_e f_e · P_e

    with `f_e` the fraction of routed (token, slot) assignments among each token's first
    `top_k` choices that go to expert e, and `P_e` the mean router probability of expert e,
    both over non-padding tokens only. Uniform routing gives 1 per layer. Layers are summed,
    as the official 8-expert training does (`loss += coef · Σ_layers l_aux`).

    Args:
        router_logits: one (T, E) tensor per MoE layer, T = batch · sequence.
        top_k: how many of each token's choices count for `f` (1 = GShard's top-1 count).
        attention_mask: (batch, sequence), 1 for real tokens; padding is left out.
    """
    total = router_logits[0].new_zeros((), dtype=torch.float32)
    for logits in router_logits:
        probs = logits.float().softmax(dim=-1)  # (T, E)
        num_experts = probs.shape[-1]
        choices = probs.topk(top_k, dim=-1).indices  # (T, top_k)
        if attention_mask is None:
            token_weight = probs.new_ones(probs.shape[0])
        else:
            token_weight = attention_mask.reshape(-1).to(probs.device, probs.dtype)
        assigned = F.one_hot(choices, num_experts).to(probs.dtype).sum(dim=1)  # (T, E)
        num_real = token_weight.sum().clamp_min(1.0)
        fraction = (assigned * token_weight[:, None]).sum(dim=0) / (num_real * top_k)
        mean_prob = (probs * token_weight[:, None]).sum(dim=0) / num_real
        # Layers may sit on different devices (device maps): sum on the first one.
        total = total + num_experts * (fraction * mean_prob).sum().to(total.device)
    return total
