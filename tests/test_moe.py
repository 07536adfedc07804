"""The sparse MoE block against a naive per-token reference, and the load-balancing loss by hand."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaMLP

from modeling_unimoe.moe import UniMoeMLP, UniMoeSparseMoeBlock, load_balancing_loss
from unimoe_conversion.tiny_checkpoint import tiny_config


def make_block(top_k: int, router_type: str = "topk_softmax", num_experts: int = 4) -> UniMoeSparseMoeBlock:
    config = tiny_config(num_experts=num_experts, num_experts_per_tok=top_k, router_type=router_type).text_config
    block = UniMoeSparseMoeBlock(config)
    for param in block.parameters():
        torch.nn.init.normal_(param, std=0.3)
    return block


def reference_moe(block: UniMoeSparseMoeBlock, x: torch.Tensor, top_k: int, softmax_over_all: bool) -> torch.Tensor:
    """One token at a time: route, weight, and sum the chosen experts' SwiGLU outputs."""
    outputs = []
    for token in x:
        logits = block.gate.weight.float() @ token.float() if softmax_over_all else block.gate.weight @ token
        chosen = sorted(range(len(logits)), key=lambda e: -float(logits[e].detach()))[:top_k]
        if softmax_over_all:
            probs = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
            weights = probs[chosen] / probs[chosen].sum()
        else:
            selected = logits[chosen].float()
            weights = torch.exp(selected - selected.max()) / torch.exp(selected - selected.max()).sum()
        total = torch.zeros_like(token)
        for weight, e in zip(weights, chosen):
            expert = block.experts[e]
            hidden = F.silu(expert.gate_proj.weight @ token) * (expert.up_proj.weight @ token)
            total = total + weight.to(token.dtype) * (expert.down_proj.weight @ hidden)
        outputs.append(total)
    return torch.stack(outputs)


@pytest.mark.parametrize("num_tokens", [1, 7, 33])
@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_moe_block_matches_per_token_reference_forward_and_backward(num_tokens, top_k):
    block = make_block(top_k)
    x = torch.randn(num_tokens, 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)

    out = block(x.view(1, num_tokens, 32)).view(num_tokens, 32)
    ref = reference_moe(block, x_ref, top_k, softmax_over_all=False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *block.parameters()], grad_out, allow_unused=True)
    grads_ref = torch.autograd.grad(ref, [x_ref, *block.parameters()], grad_out, allow_unused=True)
    for (name, _), g, g_ref in zip([("x", None), *block.named_parameters()], grads, grads_ref):
        # An expert no token reached has no gradient on either side.
        assert (g is None) == (g_ref is None), name
        if g is None:
            continue
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_gshard_router_at_inference_is_deterministic_renormalised_top2():
    block = make_block(2, router_type="gshard_top2", num_experts=8).eval()
    x = torch.randn(19, 32)
    ref = reference_moe(block, x, 2, softmax_over_all=True)
    torch.testing.assert_close(block(x[None])[0], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block(x[None]), block(x[None]))


def test_gshard_router_in_training_keeps_argmax_first_and_samples_a_different_second():
    block = make_block(2, router_type="gshard_top2", num_experts=8).train()
    x = torch.randn(500, 32)
    logits, weights, index = block.gate(x)
    assert torch.equal(index[:, 0], logits.argmax(-1))
    assert (index[:, 0] != index[:, 1]).all()
    # Gumbel sampling: the second choice is not always the second-largest logit.
    assert (index[:, 1] != logits.topk(2, dim=-1).indices[:, 1]).any()
    torch.testing.assert_close(weights.sum(-1), torch.ones(500))


def test_load_balancing_loss_equals_hand_computation():
    # 3 tokens, 2 experts, top-1.  probs = softmax(logits)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    p = torch.tensor([[0.880797, 0.119203], [0.268941, 0.731059], [0.880797, 0.119203]])
    fraction = torch.tensor([2 / 3, 1 / 3])  # experts chosen: 0, 1, 0
    mean_prob = p.mean(0)
    expected = 2 * (fraction * mean_prob).sum()  # E · Σ f·P
    torch.testing.assert_close(load_balancing_loss((logits,), top_k=1), expected, rtol=1e-5, atol=1e-6)
    # Two layers are summed.
    torch.testing.assert_close(load_balancing_loss((logits, logits), top_k=1), 2 * expected, rtol=1e-5, atol=1e-6)


def test_load_balancing_loss_with_top2_and_uniform_router_is_one():
    logits = torch.zeros(10, 4)
    torch.testing.assert_close(load_balancing_loss((logits,), top_k=2), torch.tensor(1.0))


def test_load_balancing_loss_ignores_padding_tokens():
    real = torch.randn(2, 5, 4)
    padded = torch.cat([real, 50 * torch.randn(2, 3, 4)], dim=1)  # 3 extreme pad tokens per row
    mask = torch.cat([torch.ones(2, 5), torch.zeros(2, 3)], dim=1)
    loss_real = load_balancing_loss((real.reshape(-1, 4),), top_k=2)
    loss_padded = load_balancing_loss((padded.reshape(-1, 4),), top_k=2, attention_mask=mask)
    torch.testing.assert_close(loss_padded, loss_real)
    assert not torch.allclose(load_balancing_loss((padded.reshape(-1, 4),), top_k=2), loss_real)


def test_mlp_cpu_fp32_transposed_path_equals_linear_path_and_wrapped_projections_keep_their_hooks():
    config = tiny_config().text_config
    mlp = UniMoeMLP(config)
    x = torch.randn(2, 5, config.hidden_size)
    torch.testing.assert_close(mlp(x), LlamaMLP.forward(mlp, x), rtol=1e-5, atol=1e-6)

    # A hooked projection (as PEFT, bitsandbytes or Accelerate wrap them) must still be called.
    calls = []
    mlp.up_proj.register_forward_hook(lambda *_: calls.append(1))
    torch.testing.assert_close(mlp(x), LlamaMLP.forward(mlp, x), rtol=0, atol=0)
    assert len(calls) == 2

    mlp_bf16 = UniMoeMLP(config).to(torch.bfloat16)
    torch.testing.assert_close(mlp_bf16(x.bfloat16()), LlamaMLP.forward(mlp_bf16, x.bfloat16()), rtol=0, atol=0)
