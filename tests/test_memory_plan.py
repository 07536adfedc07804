"""The meta-device memory plan against hand-counted sizes, and its device maps against `max_memory`."""

import math

import pytest

from unimoe_conversion.memory_plan import (
    device_map_for,
    main,
    meta_model,
    parse_max_memory,
    plan_memory,
    released_config,
    tensor_bytes,
)
from unimoe_conversion.tiny_checkpoint import tiny_config

H, INTER, V, L, E = 32, 64, 400, 2, 4  # the tiny config
HEAD_DIM = 8


def tiny():
    return tiny_config(vision=False, speech=False, audio=False)


def linear_bytes(out_features: int, in_features: int, precision: str) -> int:
    numel = out_features * in_features
    return {
        "fp32": 4 * numel,
        "bf16": 2 * numel,
        "int8": numel + 4 * out_features,  # int8 weight + fp32 row scale
        "int4": math.ceil(numel / 2) + 4 * math.ceil(numel / 64),  # NF4 + fp32 absmax per 64
    }[precision]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "int4"])
def test_plan_matches_hand_counted_bytes(precision):
    plain = 4 if precision == "fp32" else 2  # tensors that are not quantised
    expert = linear_bytes(INTER, H, precision) * 2 + linear_bytes(H, INTER, precision)
    attention = 4 * linear_bytes(H, H, precision)
    per_layer = attention + E * expert + plain * (E * H + 2 * H)  # + router + two norms
    # embeddings, lm_head, final norm, and the rotary inv_freq + original_inv_freq buffers
    total = L * per_layer + plain * (2 * V * H + H + 2 * (HEAD_DIM // 2))
    plan = plan_memory(tiny(), precision)
    assert plan.expert_bytes == expert
    assert plan.components["experts"] == L * E * expert
    assert plan.total_bytes == total
    assert plan.num_parameters == L * (4 * H * H + E * 3 * H * INTER + E * H + 2 * H) + 2 * V * H + H


def test_released_models_expert_bytes_and_kv_cache():
    four = plan_memory(released_config(4), "bf16")
    assert four.expert_bytes == 3 * 4096 * 11008 * 2
    assert four.components["experts"] == 32 * 4 * four.expert_bytes
    assert four.kv_cache_bytes_per_token == 2 * 32 * 4096 * 2
    eight = released_config(8).text_config
    assert (eight.num_experts, eight.router_type) == (8, "gshard_top2")
    with pytest.raises(ValueError, match="4 or 8 experts"):
        released_config(6)


def test_fused_experts_stay_bf16_in_the_int4_plan():
    config = tiny_config(vision=False, speech=False, audio=False, experts_layout="fused")
    assert plan_memory(config, "int4").components["experts"] == L * E * 3 * H * INTER * 2


@pytest.mark.parametrize("strategy", ["auto", "sequential"])
def test_device_plan_respects_max_memory_and_splits_experts_of_a_layer(strategy):
    model = meta_model(tiny(), "fp32")
    budget = sum(tensor_bytes(model).values()) // 2
    plan = plan_memory(tiny(), "fp32", max_memory={0: budget, "cpu": 10**9}, strategy=strategy)
    assert plan.device_bytes[0] <= budget
    assert sum(plan.device_bytes.values()) == plan.total_bytes
    assert sum(plan.experts_per_device.values()) == L * E
    assert plan.experts_per_device[0] % E != 0  # the GPU ends in the middle of a layer's experts
    assert plan.device_map == device_map_for(model, {0: budget, "cpu": 10**9}, strategy)


def test_parse_max_memory_and_errors():
    assert parse_max_memory(["0=24GiB", "cpu=1.5GB", "disk=1000"]) == {
        0: 24 * 2**30,
        "cpu": 1_500_000_000,
        "disk": 1000,
    }
    with pytest.raises(ValueError, match="DEVICE=SIZE"):
        parse_max_memory(["24GiB"])
    with pytest.raises(ValueError, match="Cannot read a memory size"):
        parse_max_memory(["0=lots"])


def test_command_line_prints_the_table(capsys):
    main(["--experts", "4", "--precision", "int4", "--max-memory", "0=12GiB", "cpu=64GiB"])
    out = capsys.readouterr().out
    assert "| Uni-MoE 4e | int4 |" in out
    assert "Uni-MoE 4e int4: 0:" in out
