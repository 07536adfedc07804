"""UniMoeForConditionalGeneration on the text path: generation, saving, remote code, dtypes."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel

from modeling_unimoe import UniMoeConfig, UniMoeForConditionalGeneration, UniMoeTextConfig
from modeling_unimoe.moe import UniMoeMLP, UniMoeSparseMoeBlock, load_balancing_loss
from unimoe_conversion.tiny_checkpoint import tiny_config


def tiny_model(**text_overrides) -> UniMoeForConditionalGeneration:
    return UniMoeForConditionalGeneration(tiny_config(vision=False, speech=False, audio=False, **text_overrides)).eval()


def random_ids(batch: int = 2, length: int = 9) -> torch.Tensor:
    return torch.randint(3, 400, (batch, length))


def test_moe_layers_layout():
    model = tiny_model(num_hidden_layers=4, moe_layers="even")
    kinds = [type(layer.mlp) for layer in model.model.layers]
    assert kinds == [UniMoeSparseMoeBlock, UniMoeMLP, UniMoeSparseMoeBlock, UniMoeMLP]
    model = tiny_model(num_hidden_layers=3, moe_layers=[1])
    assert [type(layer.mlp) for layer in model.model.layers] == [UniMoeMLP, UniMoeSparseMoeBlock, UniMoeMLP]


def test_state_dict_uses_official_key_names():
    keys = set(tiny_model().state_dict())
    assert "model.layers.0.mlp.gate.weight" in keys
    for proj in ("gate_proj", "up_proj", "down_proj"):
        assert f"model.layers.1.mlp.experts.3.{proj}.weight" in keys
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= keys
    assert not any("inv_freq" in key for key in keys)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_experts_per_tok=5), "num_experts_per_tok"),
        (dict(num_experts_per_tok=0), "num_experts_per_tok"),
        (dict(moe_layers=[0, 7]), r"moe_layers has layer indices \[7\]"),
        (dict(moe_layers="odd"), r"moe_layers.*odd"),
        (dict(router_type="noisy"), "router_type must be one of"),
        (dict(router_type="gshard_top2", num_experts_per_tok=1), "gshard_top2"),
    ],
)
def test_config_validation_errors(overrides, message):
    base = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    with pytest.raises(Exception, match=message):
        UniMoeTextConfig(**base, **overrides)


def test_default_config_is_the_released_7b_speech_model():
    config = UniMoeConfig()
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size, text.vocab_size) == (
        4096,
        32,
        11008,
        32000,
    )
    assert (text.num_experts, text.num_experts_per_tok, text.moe_layers, text.router_type) == (
        4,
        2,
        "all",
        "topk_softmax",
    )
    assert (text.rms_norm_eps, text.max_position_embeddings, text.pad_token_id) == (1e-5, 4096, 0)
    assert config.vision_config.image_size == 336 and config.speech_config.d_model == 768


def test_loss_adds_weighted_aux_loss_when_router_logits_are_requested():
    model = tiny_model(router_aux_loss_coef=0.5)
    ids = random_ids()
    plain = model(ids, labels=ids)
    with_aux = model(ids, labels=ids, output_router_logits=True)
    assert plain.aux_loss is None and len(with_aux.router_logits) == 2
    expected_aux = load_balancing_loss(with_aux.router_logits, top_k=2)
    torch.testing.assert_close(with_aux.aux_loss, expected_aux)
    torch.testing.assert_close(with_aux.loss, plain.loss + 0.5 * expected_aux)


def test_aux_loss_ignores_padding():
    model = tiny_model()
    ids = random_ids(1, 6)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], dim=1)
    alone = model(ids, output_router_logits=True).aux_loss
    left_padded = model(padded, attention_mask=mask, output_router_logits=True).aux_loss
    torch.testing.assert_close(left_padded, alone, rtol=1e-4, atol=1e-5)


def test_inputs_embeds_equal_input_ids():
    model = tiny_model()
    ids = random_ids()
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(ids).logits)


def test_sdpa_and_eager_attention_agree():
    model = tiny_model()
    ids = random_ids()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    sdpa = model(ids, attention_mask=mask).logits
    model.set_attn_implementation("eager")
    eager = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(sdpa[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sdpa[1, 3:], eager[1, 3:], rtol=1e-5, atol=1e-5)


def test_cached_greedy_generation_equals_uncached():
    model = tiny_model()
    ids = random_ids()
    cached = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
    uncached = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.shape == (2, 21)
    assert torch.equal(cached, uncached)


def test_generate_from_inputs_embeds_equals_generate_from_ids():
    model = tiny_model()
    ids = random_ids()
    from_ids = model.generate(ids, max_new_tokens=6, do_sample=False)
    embeds = model.get_input_embeddings()(ids)
    from_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=6, do_sample=False)
    assert torch.equal(from_embeds, from_ids[:, ids.shape[1] :])  # only the new tokens come back


def test_generation_continues_the_argmax_of_the_full_forward():
    model = tiny_model()
    ids = random_ids(1, 5)
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    for step in range(4):
        prefix = generated[:, : 5 + step]
        assert model(prefix).logits[0, -1].argmax() == generated[0, 5 + step]


def test_beam_search_and_sampling_run_with_and_without_cache():
    model = tiny_model()
    ids = random_ids(1, 5)
    beams = [model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=c) for c in (True, False)]
    assert torch.equal(beams[0], beams[1])
    samples = []
    for _ in range(2):
        torch.manual_seed(7)
        samples.append(model.generate(ids, max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.9))
    assert torch.equal(samples[0], samples[1]) and samples[0].shape == (1, 11)


def test_left_padded_batch_generation_equals_single_sample():
    model = tiny_model()
    short, long = random_ids(1, 4), random_ids(1, 7)
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 3), torch.ones(1, 4)], 1), torch.ones(1, 7)]).long()
    together = model.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False)
    alone = model.generate(short, max_new_tokens=5, do_sample=False)
    assert torch.equal(together[0, 3:], alone[0])


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model().train()
    ids = random_ids()
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    for name, grad in plain.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_is_close_to_fp32(dtype):
    model = tiny_model()
    ids = random_ids()
    reference = model(ids).logits
    half = model.to(dtype)(ids).logits
    assert half.dtype == dtype
    torch.testing.assert_close(half.float(), reference, rtol=0.1, atol=0.05)


def test_placeholder_tokens_without_media_raise_with_counts():
    model = tiny_model()
    ids = random_ids(1, 6)
    ids[0, 2:4] = model.config.image_token_id
    with pytest.raises(ValueError, match="image placeholder tokens.*tokens: 2, features: 0"):
        model(ids)


def test_sequence_longer_than_the_model_allows_raises():
    model = tiny_model(max_position_embeddings=16)
    with pytest.raises(ValueError, match="longer than the model allows"):
        model(random_ids(1, 17))


def test_save_and_reload_gives_identical_logits(tmp_path):
    model = tiny_model()
    ids = random_ids()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors.index.json" in files and any(f.endswith(".safetensors") for f in files)
    assert {"configuration_unimoe.py", "modeling_unimoe.py", "moe.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    for auto_class in (
        "AutoConfig",
        "AutoModel",
        "AutoModelForCausalLM",
        "AutoModelForImageTextToText",
        "AutoModelForMultimodalLM",
    ):
        assert auto_class in auto_map
    reloaded = UniMoeForConditionalGeneration.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_remote_code_loads_in_a_process_where_the_package_cannot_be_imported(tmp_path):
    model = tiny_model()
    ids = random_ids()
    model.save_pretrained(tmp_path / "ckpt")
    torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class HideProject(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("modeling_unimoe", "unimoe_processing", "unimoe_conversion"):
                    raise ImportError(f"{{name}} is hidden: the checkpoint must not need the package")

        sys.meta_path.insert(0, HideProject())
        try:
            import modeling_unimoe  # noqa: F401
            sys.exit("the package is still importable")
        except ImportError:
            pass
        import torch
        from transformers import AutoModel, AutoModelForCausalLM
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        for auto in (AutoModel, AutoModelForCausalLM):
            model = auto.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"], rtol=0, atol=0)
        print("REMOTE-OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK" in result.stdout


def test_tiny_checkpoint_writer_output_loads_with_automodel(tiny_checkpoint):
    model = AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    assert model.config.text_config.num_experts == 4
    assert (tiny_checkpoint / "tokenizer_config.json").exists()
