"""Expert-level Accelerate device maps: experts of one layer on different devices, CPU/disk offload,
`max_memory`, and a GPU + CPU-offloaded-experts run when a GPU is present."""

import pytest
import torch
from accelerate import infer_auto_device_map
from accelerate.utils import compute_module_sizes

from modeling_unimoe import UniMoeForConditionalGeneration
from modeling_unimoe.moe import UniMoeExpert
from unimoe_conversion.tiny_checkpoint import tiny_config

NUM_LAYERS, NUM_EXPERTS = 2, 4


def expert_devices(device_map: dict[str, str | int], layer: int) -> dict[int, str | int]:
    """Device of each expert of `layer`, resolving entries that cover whole layers or the model."""
    devices = {}
    for expert in range(NUM_EXPERTS):
        name = f"model.layers.{layer}.mlp.experts.{expert}"
        owner = max((key for key in device_map if key == "" or name == key or name.startswith(key + ".")), key=len)
        devices[expert] = device_map[owner]
    return devices


def bytes_on(device_map: dict[str, str | int], sizes: dict[str, int], device: str | int) -> int:
    return sum(sizes[name] for name, placed in device_map.items() if placed == device)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny text-only model saved to disk, its inputs and its single-device outputs."""
    torch.manual_seed(0)
    model = UniMoeForConditionalGeneration(tiny_config(vision=False, speech=False, audio=False)).eval()
    path = tmp_path_factory.mktemp("tiny-text")
    model.save_pretrained(path)
    input_ids = torch.randint(3, 400, (2, 11))
    with torch.no_grad():
        reference = model(input_ids, labels=input_ids, output_router_logits=True)
        generated = model.generate(input_ids[:1], max_new_tokens=6, do_sample=False)
    return {
        "path": path,
        "sizes": compute_module_sizes(model),
        "input_ids": input_ids,
        "logits": reference.logits,
        "router_logits": reference.router_logits,
        "loss": reference.loss,
        "generated": generated,
    }


def test_infer_auto_device_map_splits_the_experts_of_one_layer_within_max_memory():
    with torch.device("meta"):
        model = UniMoeForConditionalGeneration(tiny_config(vision=False, speech=False, audio=False))
    sizes = compute_module_sizes(model)
    budget = sizes[""] // 2
    device_map = infer_auto_device_map(
        model, max_memory={"cpu": budget, "disk": 10**9}, no_split_module_classes=model._no_split_modules
    )
    devices = [expert_devices(device_map, layer) for layer in range(NUM_LAYERS)]
    assert any({"cpu", "disk"} <= set(layer.values()) for layer in devices), devices
    assert bytes_on(device_map, sizes, "cpu") <= budget


@pytest.mark.parametrize("strategy", ["auto", "balanced", "sequential"])
def test_device_map_strategies_offload_experts_and_match_the_single_device_model(checkpoint, strategy, tmp_path):
    budget = checkpoint["sizes"][""] // 2
    model = UniMoeForConditionalGeneration.from_pretrained(
        checkpoint["path"], device_map=strategy, max_memory={"cpu": budget, "disk": 10**9}, offload_folder=tmp_path
    ).eval()
    placed = set(expert_devices(model.hf_device_map, 0).values())
    assert placed == {"cpu", "disk"}, model.hf_device_map  # experts of one layer on both
    assert bytes_on(model.hf_device_map, checkpoint["sizes"], "cpu") <= budget
    with torch.no_grad():
        logits = model(checkpoint["input_ids"]).logits
    torch.testing.assert_close(logits, checkpoint["logits"], rtol=0, atol=1e-6)


def explicit_map() -> dict[str, str]:
    """Everything on the CPU but experts 1 and 3 of layer 0 and expert 2 of layer 1, on disk."""
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    for layer in range(NUM_LAYERS):
        prefix = f"model.layers.{layer}"
        for name in ("self_attn", "input_layernorm", "post_attention_layernorm", "mlp.gate"):
            device_map[f"{prefix}.{name}"] = "cpu"
        for expert in range(NUM_EXPERTS):
            on_disk = (layer, expert) in {(0, 1), (0, 3), (1, 2)}
            device_map[f"{prefix}.mlp.experts.{expert}"] = "disk" if on_disk else "cpu"
    return device_map


def test_explicit_map_with_disk_experts_matches_and_generates_the_same_tokens(checkpoint, tmp_path):
    model = UniMoeForConditionalGeneration.from_pretrained(
        checkpoint["path"], device_map=explicit_map(), offload_folder=tmp_path
    ).eval()
    experts = model.model.layers[0].mlp.experts
    assert experts[1].gate_proj.weight.device.type == "meta"  # read from disk at each call
    assert experts[0].gate_proj.weight.device.type == "cpu"
    with torch.no_grad():
        logits = model(checkpoint["input_ids"]).logits
        generated = model.generate(checkpoint["input_ids"][:1], max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(logits, checkpoint["logits"], rtol=0, atol=1e-6)
    assert torch.equal(generated, checkpoint["generated"])


def test_each_expert_runs_once_per_layer_on_exactly_its_routed_tokens(checkpoint, tmp_path):
    model = UniMoeForConditionalGeneration.from_pretrained(
        checkpoint["path"], device_map=explicit_map(), offload_folder=tmp_path
    ).eval()
    calls = {}
    for name, module in model.named_modules():
        if isinstance(module, UniMoeExpert):
            module.register_forward_pre_hook(
                lambda mod, args, name=name: calls.setdefault(name, []).append((args[0].shape[0], args[0].device))
            )
    with torch.no_grad():
        model(checkpoint["input_ids"])

    top_k = model.config.text_config.num_experts_per_tok
    for layer, router_logits in enumerate(checkpoint["router_logits"]):
        routed = torch.bincount(router_logits.topk(top_k, dim=-1).indices.reshape(-1), minlength=NUM_EXPERTS)
        for expert, count in enumerate(routed.tolist()):
            name = f"model.layers.{layer}.mlp.experts.{expert}"
            expected = [(count, torch.device("cpu"))] if count else []
            assert calls.get(name, []) == expected, name


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: experts on cuda:0 next to CPU-offloaded experts"
)
def test_gpu_experts_next_to_cpu_offloaded_experts_match_the_single_device_model(checkpoint):
    device_map = {name: ("cpu" if name.endswith(("experts.1", "experts.2")) else 0) for name in explicit_map()}
    model = UniMoeForConditionalGeneration.from_pretrained(checkpoint["path"], device_map=device_map).eval()
    experts = model.model.layers[0].mlp.experts
    assert experts[0].gate_proj.weight.device.type == "cuda"
    assert experts[1].gate_proj.weight.device.type in ("cpu", "meta")  # kept in CPU RAM, run on the GPU
    seen = []
    for expert in experts:
        expert.register_forward_pre_hook(lambda mod, args: seen.append(args[0].device.type))
    input_ids = checkpoint["input_ids"].to(0)
    with torch.no_grad():
        outputs = model(input_ids, labels=input_ids, output_router_logits=True)
    assert set(seen) == {"cuda"}
    torch.testing.assert_close(outputs.logits.cpu(), checkpoint["logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs.loss.cpu(), checkpoint["loss"], rtol=1e-4, atol=1e-4)
