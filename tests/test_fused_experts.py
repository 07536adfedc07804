"""The optional fused experts layout against the per-expert default: same outputs and gradients,
same checkpoint keys both ways, transformers' experts kernels, and the expert-parallel plan."""

import pytest
import torch
from safetensors.torch import load_file
from transformers.distributed import DistributedConfig
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from modeling_unimoe import UniMoeConfig, UniMoeForConditionalGeneration, UniMoeTextConfig
from modeling_unimoe.modeling_unimoe import FUSED_EXPERTS_EP_PLAN, UniMoeFusedExperts
from unimoe_conversion.tiny_checkpoint import tiny_config


@pytest.fixture(scope="module")
def per_expert(tmp_path_factory):
    """A per-expert model saved as the Hub stores it, and inputs."""
    torch.manual_seed(0)
    model = UniMoeForConditionalGeneration(tiny_config(vision=False, speech=False, audio=False)).eval()
    path = tmp_path_factory.mktemp("per-expert")
    model.save_pretrained(path)
    return {"model": model, "path": path, "input_ids": torch.randint(3, 400, (2, 9))}


def load_fused(path, **kwargs) -> UniMoeForConditionalGeneration:
    config = UniMoeConfig.from_pretrained(path)
    config.text_config.experts_layout = "fused"
    return UniMoeForConditionalGeneration.from_pretrained(path, config=config, **kwargs)


def stacked(model: UniMoeForConditionalGeneration, layer: int, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-expert weights (or gradients) of `layer` in the fused layout's shapes."""
    experts = model.model.layers[layer].mlp.experts

    def get(linear):
        return linear.weight.grad if grad else linear.weight

    gate_up = torch.stack([torch.cat([get(e.gate_proj), get(e.up_proj)]) for e in experts])
    return gate_up, torch.stack([get(e.down_proj) for e in experts])


def test_fused_layout_loads_the_per_expert_checkpoint(per_expert):
    fused = load_fused(per_expert["path"])
    for layer in range(2):
        experts = fused.model.layers[layer].mlp.experts
        assert isinstance(experts, UniMoeFusedExperts)
        gate_up, down = stacked(per_expert["model"], layer)
        assert torch.equal(experts.gate_up_proj, gate_up)
        assert torch.equal(experts.down_proj, down)


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "batched_mm"])
def test_fused_layout_matches_the_per_expert_model(per_expert, implementation):
    fused = load_fused(per_expert["path"], experts_implementation=implementation).eval()
    assert fused.config.text_config._experts_implementation == implementation
    with torch.no_grad():
        logits = fused(per_expert["input_ids"]).logits
        reference = per_expert["model"](per_expert["input_ids"]).logits
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])
def test_fused_gradients_equal_the_per_expert_gradients(per_expert, implementation):
    fused = load_fused(per_expert["path"], experts_implementation=implementation).train()
    reference = UniMoeForConditionalGeneration.from_pretrained(per_expert["path"]).train()
    ids = per_expert["input_ids"]
    fused(ids, labels=ids).loss.backward()
    reference(ids, labels=ids).loss.backward()
    for layer in range(2):
        gate_up, down = stacked(reference, layer, grad=True)
        experts = fused.model.layers[layer].mlp.experts
        torch.testing.assert_close(experts.gate_up_proj.grad, gate_up, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(experts.down_proj.grad, down, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loaded", [True, False], ids=["from_pretrained", "constructed"])
def test_fused_layout_saves_the_official_per_expert_keys(per_expert, loaded, tmp_path):
    if loaded:
        fused = load_fused(per_expert["path"])
    else:
        torch.manual_seed(1)
        fused = UniMoeForConditionalGeneration(
            tiny_config(vision=False, speech=False, audio=False, experts_layout="fused")
        )
    fused.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(per_expert["model"].state_dict())
    gate_up, down = fused.model.layers[1].mlp.experts.gate_up_proj, fused.model.layers[1].mlp.experts.down_proj
    intermediate = down.shape[-1]
    assert torch.equal(saved["model.layers.1.mlp.experts.2.gate_proj.weight"], gate_up[2, :intermediate])
    assert torch.equal(saved["model.layers.1.mlp.experts.2.up_proj.weight"], gate_up[2, intermediate:])
    assert torch.equal(saved["model.layers.1.mlp.experts.2.down_proj.weight"], down[2])


def test_set_experts_implementation_reaches_the_fused_experts(per_expert, monkeypatch):
    calls = []
    batched = ALL_EXPERTS_FUNCTIONS["batched_mm"]

    def spy(module, *args):
        calls.append(module)
        return batched(module, *args)

    monkeypatch.setitem(ALL_EXPERTS_FUNCTIONS._global_mapping, "batched_mm", spy)
    fused = load_fused(per_expert["path"], experts_implementation="eager").eval()
    fused.set_experts_implementation("batched_mm")
    assert fused.config.text_config._experts_implementation == "batched_mm"
    with torch.no_grad():
        logits = fused(per_expert["input_ids"]).logits
    assert len(calls) == 2  # one call per MoE layer
    torch.testing.assert_close(logits, per_expert["model"](per_expert["input_ids"]).logits, rtol=1e-5, atol=1e-5)


def test_only_the_fused_layout_has_an_expert_parallel_plan(per_expert):
    fused = load_fused(per_expert["path"])
    assert fused.ep_plan == {f"model.{name}": style for name, style in FUSED_EXPERTS_EP_PLAN.items()}
    assert per_expert["model"].ep_plan == {}
    with pytest.raises(ValueError, match="experts_layout='fused'"):
        per_expert["model"]._resolve_parallel_plans(DistributedConfig(tp_size=2, ep_size=2))


def test_peft_lora_on_the_fused_expert_parameters_trains_only_the_adapters(per_expert):
    from peft import LoraConfig, get_peft_model

    fused = load_fused(per_expert["path"], experts_implementation="eager")
    config = LoraConfig(r=4, lora_dropout=0.0, target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    model = get_peft_model(fused, config)
    ids = per_expert["input_ids"]
    model(ids, labels=ids).loss.backward()
    with_grad = {name for name, param in model.named_parameters() if param.grad is not None}
    assert with_grad and all("lora_" in name for name in with_grad)
    assert any("mlp.experts" in name for name in with_grad)


def test_eager_fused_experts_skip_the_ids_of_other_ranks():
    # Expert parallelism gives each rank's experts global-looking local ids, with
    # `num_local_experts` standing for "another rank's expert" (and weight 0).
    experts = UniMoeFusedExperts(tiny_config(num_experts=2).text_config)
    torch.nn.init.normal_(experts.gate_up_proj)
    torch.nn.init.normal_(experts.down_proj)
    x = torch.randn(5, 32)
    index = torch.tensor([[0, 2], [2, 1], [1, 0], [2, 2], [0, 1]])
    weights = torch.rand(5, 2)
    expected = torch.stack(
        [
            sum(
                (weights[t, j] * experts.expert_forward(int(e), x[t : t + 1])[0] for j, e in enumerate(row) if e < 2),
                torch.zeros(32),
            )
            for t, row in enumerate(index)
        ]
    )
    experts.config._experts_implementation = "eager"
    torch.testing.assert_close(experts(x, index, weights), expected, rtol=1e-5, atol=1e-6)


def test_unknown_experts_layout_is_rejected():
    with pytest.raises(Exception, match="experts_layout must be one of"):  # strict-dataclass wrapper
        UniMoeTextConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, experts_layout="stacked")
