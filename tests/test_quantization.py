"""bitsandbytes 4-bit/8-bit quantisation of the per-expert `nn.Linear` experts (the fused layout's
3D experts stay unquantised). bitsandbytes is optional (`pip install -e ".[quantization]"`)."""

import pytest
import torch
from torch import nn
from transformers import BitsAndBytesConfig

from modeling_unimoe import UniMoeConfig, UniMoeForConditionalGeneration
from modeling_unimoe.modeling_unimoe import UniMoeFusedExperts
from unimoe_conversion.tiny_checkpoint import tiny_config

bnb = pytest.importorskip("bitsandbytes", reason='bitsandbytes is optional: pip install -e ".[quantization]"')

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = UniMoeForConditionalGeneration(
        tiny_config(vision=False, speech=False, audio=False, hidden_size=64, intermediate_size=128)
    ).eval()
    path = tmp_path_factory.mktemp("tiny-fp32")
    model.save_pretrained(path)
    return {"model": model, "path": path, "input_ids": torch.randint(3, 400, (2, 9))}


def expert_linears(model: UniMoeForConditionalGeneration) -> list[nn.Module]:
    return [
        getattr(expert, proj) for layer in model.model.layers for expert in layer.mlp.experts for proj in PROJECTIONS
    ]


def dequantized_copy(quantized: UniMoeForConditionalGeneration, reference: UniMoeForConditionalGeneration):
    """`reference` with every 4-bit weight of `quantized` replaced by its dequantised values."""
    model = UniMoeForConditionalGeneration(reference.config).eval()
    model.load_state_dict(reference.state_dict())
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            model.get_submodule(name).weight.data.copy_(weight.float())
    return model


def test_4bit_quantises_every_expert_linear_and_matches_its_dequantised_weights(checkpoint):
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = UniMoeForConditionalGeneration.from_pretrained(
        checkpoint["path"], quantization_config=config, device_map="cpu"
    ).eval()
    for linear in expert_linears(model):
        assert isinstance(linear, bnb.nn.Linear4bit)
        assert (
            linear.weight.dtype == torch.uint8
            and linear.weight.numel() == linear.out_features * linear.in_features // 2
        )
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert model.model.layers[0].mlp.gate.weight.dtype == torch.float32  # the router is not an nn.Linear
    assert type(model.lm_head) is nn.Linear

    reference = dequantized_copy(model, checkpoint["model"])
    with torch.no_grad():
        logits = model(checkpoint["input_ids"]).logits
        expected = reference(checkpoint["input_ids"]).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits, checkpoint["model"](checkpoint["input_ids"]).logits, atol=1e-4)


def test_8bit_quantises_every_expert_linear(checkpoint):
    model = UniMoeForConditionalGeneration.from_pretrained(
        checkpoint["path"], quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map="cpu"
    ).eval()
    for linear in expert_linears(model):
        assert isinstance(linear, bnb.nn.Linear8bitLt)
        assert linear.weight.dtype == torch.int8
    # LLM.int8 rounds weights to 1/127 of each row's max and runs in fp16: close, not equal.
    expert = model.model.layers[1].mlp.experts[2].down_proj
    original = checkpoint["model"].model.layers[1].mlp.experts[2].down_proj.weight.detach()
    step = expert.weight.SCB[:, None].float() / 127  # the stored row scale, max |w| of the row in fp16
    torch.testing.assert_close(step[:, 0], original.abs().amax(dim=1) / 127, rtol=1e-3, atol=0)
    error = (expert.weight.float() * step - original).abs()
    assert (error <= step / 2 + original.abs() * 2**-10).all()  # nearest step of the fp16-rounded weight
    with torch.no_grad():
        logits = model(checkpoint["input_ids"]).logits
    torch.testing.assert_close(logits, checkpoint["model"](checkpoint["input_ids"]).logits, rtol=0, atol=5e-2)


def test_fused_experts_stay_unquantised(checkpoint):
    config = UniMoeConfig.from_pretrained(checkpoint["path"])
    config.text_config.experts_layout = "fused"
    model = UniMoeForConditionalGeneration.from_pretrained(
        checkpoint["path"],
        config=config,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
        device_map="cpu",
    )
    experts = model.model.layers[0].mlp.experts
    assert isinstance(experts, UniMoeFusedExperts)
    assert experts.gate_up_proj.dtype == experts.down_proj.dtype == torch.float32  # bitsandbytes skips 3D params
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: bitsandbytes' GPU kernels")
@pytest.mark.parametrize("bits", [4, 8])
def test_quantised_experts_on_gpu(checkpoint, bits):
    if bits == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    model = UniMoeForConditionalGeneration.from_pretrained(
        checkpoint["path"], quantization_config=config, device_map={"": 0}, dtype=torch.bfloat16
    ).eval()
    linear_class = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    for linear in expert_linears(model):
        assert isinstance(linear, linear_class) and linear.weight.device.type == "cuda"
    full = UniMoeForConditionalGeneration.from_pretrained(checkpoint["path"], dtype=torch.bfloat16)
    assert model.get_memory_footprint() < full.get_memory_footprint()
    with torch.no_grad():
        logits = model(checkpoint["input_ids"].to(0)).logits.float().cpu()
    torch.testing.assert_close(logits, checkpoint["model"](checkpoint["input_ids"]).logits, rtol=0, atol=0.25)
