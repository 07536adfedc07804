"""Conversion of official-layout checkpoints: logits against an independent reference, tensor
provenance, the Hub folder, and clear failures on missing, extra and mis-shaped keys.

The inputs are tiny checkpoints in the exact official layout (`official_synthetic`). The
reference reads those raw files with `torch.load` and runs a hand-written LLaMA + MoE forward in
which every LoRA is applied unmerged and every token is routed by hand, so it shares no code
with the converter or the model.
"""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch.nn import functional as F

from modeling_unimoe import UniMoeForConditionalGeneration
from unimoe_conversion.checkpoint_io import CheckpointFormatError, TensorFile
from unimoe_conversion.convert_unimoe_to_hf import SourcePaths, convert, main
from unimoe_conversion.official_layout import ConversionError
from unimoe_conversion.official_synthetic import FOLDERS, SyntheticDims, write_official_checkpoint
from unimoe_conversion.shard_writer import ShardWriter, parse_size, plan_shards
from unimoe_conversion.tiny_checkpoint import TINY_AUDIO_QFORMER

VARIANTS = ("speech", "interval", "audio", "8e")
EXPERT_FILES = ["mlp_audiocap", "mlp_basev", "mlp_base", "mlp_base1", "mlp_base4", "mlp_base7", "mlp_base", "mlp_base7"]
DIMS = SyntheticDims()


def _convert(paths: SourcePaths, variant: str, output: Path, **kwargs):
    qformer = TINY_AUDIO_QFORMER if variant == "audio" else None
    return convert(variant, paths, output, dtype=torch.float32, progress=False, audio_qformer_config=qformer, **kwargs)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """variant -> (input paths, report, output dir, loaded model), converted once per module."""
    results = {}
    for variant in VARIANTS:
        root = tmp_path_factory.mktemp(f"official-{variant}")
        paths = write_official_checkpoint(root / "in", variant)
        report = _convert(paths, variant, root / "out", max_shard_size="20KB")
        model = UniMoeForConditionalGeneration.from_pretrained(root / "out").eval()
        results[variant] = (paths, report, root / "out", model)
    return results


# ------------------------------------------------------------------ independent reference


def _load(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


class OfficialWeights:
    """The raw official files, with the official loader's precedence written out by hand."""

    def __init__(self, paths: SourcePaths, variant: str):
        self.variant = variant
        self.base = {}
        for shard in sorted(paths.base.glob("pytorch_model-*.bin")):
            self.base |= _load(shard)
        self.adapter = _load(paths.delta / "adapter_model.bin")
        adapter_config = json.loads((paths.delta / "adapter_config.json").read_text())
        self.adapter_scale = adapter_config["lora_alpha"] / adapter_config["r"]
        self.gates = _load(paths.delta / "mlp_gates.bin")
        self.config = json.loads((paths.delta / "config.json").read_text())
        if variant == "8e":
            self.experts = {name: _load(paths.experts / f"{name}.bin") for name in set(EXPERT_FILES)}
            self.expert_lora = [_load(paths.delta / f"{k}_mlp_experts.bin") for k in range(8)]
            self.expert_scale = self.config["lora_alpha"] / self.config["lora_r"]

    def linear(self, x: torch.Tensor, module: str) -> torch.Tensor:
        """Base weight plus the PEFT adapter's LoRA, unmerged: x W^T + s (x A^T) B^T."""
        y = x @ self.base[f"{module}.weight"].T
        key = f"base_model.model.{module}.lora_{{}}.weight"
        if key.format("A") in self.adapter:
            y = y + self.adapter_scale * (x @ self.adapter[key.format("A")].T) @ self.adapter[key.format("B")].T
        return y

    def expert_8e(self, x: torch.Tensor, layer: int, expert: int) -> torch.Tensor:
        """DeepSpeed expert k: Experts file [k]'s dense MLP + its own unmerged LoRA (official forward)."""
        dense, lora, s = self.experts[EXPERT_FILES[expert]], self.expert_lora[expert], self.expert_scale
        lora_key = f"model.layers.{layer}.mlp.deepspeed_moe.experts.deepspeed_experts.0.{{}}_proj_lora_{{}}.weight"

        def proj(h, name):
            a, b = lora[lora_key.format(name, "A")], lora[lora_key.format(name, "B")]
            return h @ dense[f"model.layers.{layer}.mlp.{name}_proj.weight"].T + s * (h @ a.T) @ b.T

        return proj(F.silu(proj(x, "gate")) * proj(x, "up"), "down")

    def mlp(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        prefix = f"model.layers.{layer}.mlp"
        if self.variant == "8e":
            logits = x @ self.gates[f"{prefix}.deepspeed_moe.gate.wg.weight"].T
            probs = logits.softmax(-1)
            out = torch.zeros_like(x)
            for t in range(x.shape[0]):  # GShard top-2: argmax, then argmax of the rest, renormalised
                first = int(logits[t].argmax())
                second = int(logits[t].masked_fill(F.one_hot(torch.tensor(first), 8).bool(), -math.inf).argmax())
                weights = probs[t, [first, second]] / probs[t, [first, second]].sum()
                for w, e in zip(weights, (first, second)):
                    out[t] += w * self.expert_8e(x[t : t + 1], layer, e)[0]
            return out
        if f"{prefix}.gate.weight" not in self.gates:  # dense layer of the interval layout
            return self.linear(
                F.silu(self.linear(x, f"{prefix}.gate_proj")) * self.linear(x, f"{prefix}.up_proj"),
                f"{prefix}.down_proj",
            )
        # Router: mlp_gates.bin's weight (it overwrites the merged router LoRA, as the official loader).
        logits = x @ self.gates[f"{prefix}.gate.weight"].T
        top, index = logits.topk(2, dim=-1)
        weights = top.softmax(-1)
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for w, e in zip(weights[t], index[t].tolist()):
                expert = f"{prefix}.experts.{e}"
                h = F.silu(self.linear(x[t : t + 1], f"{expert}.gate_proj")) * self.linear(
                    x[t : t + 1], f"{expert}.up_proj"
                )
                out[t] += w * self.linear(h, f"{expert}.down_proj")[0]
        return out

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """LLaMA forward of one sequence (RMSNorm, RoPE, causal MHA, MoE MLPs)."""
        cfg, base = self.config, self.base
        heads, eps = cfg["num_attention_heads"], cfg["rms_norm_eps"]
        head_dim = cfg["hidden_size"] // heads
        x = base["model.embed_tokens.weight"][input_ids]
        n = x.shape[0]
        inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.arange(n).float()[:, None] * inv_freq[None]
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

        def rms(h, w):
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w

        def rope(h):  # (heads, n, head_dim)
            rotated = torch.cat([-h[..., head_dim // 2 :], h[..., : head_dim // 2]], -1)
            return h * cos + rotated * sin

        causal = torch.full((n, n), -math.inf).triu(1)
        for layer in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{layer}"
            h = rms(x, base[f"{p}.input_layernorm.weight"])
            q, k, v = (
                self.linear(h, f"{p}.self_attn.{m}_proj").view(n, heads, head_dim).transpose(0, 1) for m in "qkv"
            )
            scores = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(head_dim) + causal
            attn = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, -1)
            x = x + self.linear(attn, f"{p}.self_attn.o_proj")
            x = x + self.mlp(rms(x, base[f"{p}.post_attention_layernorm.weight"]), layer)
        return rms(x, base["model.norm.weight"]) @ base["lm_head.weight"].T


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_official_reference(converted, variant):
    paths, _, _, model = converted[variant]
    input_ids = torch.randint(3, DIMS.vocab_size, (9,))
    expected = OfficialWeights(paths, variant).logits(input_ids)
    with torch.no_grad():
        logits = model(input_ids=input_ids[None]).logits[0]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ tensor provenance


def _expected_sources(paths: SourcePaths, variant: str) -> dict[str, torch.Tensor]:
    """Connector and encoder parameters -> the raw tensor the official loader ends up with."""
    aligner = _load(paths.delta / "mm_audio_aligner.bin")
    non_lora = _load(paths.delta / "non_lora_trainables.bin")
    clip = _load(paths.clip / "pytorch_model.bin")
    expected = {"model.mm_projector." + k.split("mm_projector.")[1]: v for k, v in non_lora.items()}
    expected |= {
        "model.vision_tower." + k[len("vision_model.") :]: v
        for k, v in clip.items()
        if k.startswith("vision_model.") and "position_ids" not in k
    }
    if variant == "audio":
        beats = torch.load(paths.beats, weights_only=True)["model"]
        expected |= {
            "model.audio_tower." + k: v
            for k, v in beats.items()
            if not re.match(r"encoder\.layers\.[1-9]\d*\.self_attn\.relative_attention_bias", k)
        }
        for key, value in aligner.items():
            if re.search(r"encoder\.layer\.\d+\.(intermediate|output)\.", key):
                continue  # 4.31's unused text-token FFN
            name = key.replace("model.mm_audio_aligner.qformer.qformer.", "model.audio_aligner.qformer.")
            name = name.replace("model.mm_audio_aligner.projector.", "model.audio_projector.")
            expected[name.replace("model.mm_audio_aligner.query_tokens", "model.audio_aligner.query_tokens")] = value
        return expected
    with safe_open(paths.whisper / "model.safetensors", "pt") as whisper:
        expected |= {
            "model.speech_tower." + k[len("model.encoder.") :]: whisper.get_tensor(k)
            for k in whisper.keys()
            if k.startswith("model.encoder.")
        }
    for key, value in aligner.items():
        name = key.replace("model.mm_audio_aligner.decoder.audio_decoder.", "model.speech_aligner.decoder.")
        name = name.replace("model.mm_audio_aligner.projector.", "model.speech_projector.")
        expected[name.replace("model.query_tokens", "model.speech_aligner.query_tokens")] = value
    return expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_connectors_and_encoders_come_from_the_right_files(converted, variant):
    paths, _, _, model = converted[variant]
    state = model.state_dict()
    expected = _expected_sources(paths, variant)
    llm = re.compile(r"(lm_head|model\.(embed_tokens|norm|layers)\.)")
    assert set(expected) == {name for name in state if not llm.match(name)}
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value.float(), rtol=0, atol=0, msg=name)


def test_8e_experts_follow_the_global_expert_order(converted):
    paths, _, _, model = converted["8e"]
    raw = OfficialWeights(paths, "8e")
    for expert in (2, 6, 7):  # 2 and 6 share mlp_base, 5 and 7 share mlp_base7: their own LoRA differs
        lora = raw.expert_lora[expert]
        key = "model.layers.1.mlp.deepspeed_moe.experts.deepspeed_experts.0.up_proj_lora_{}.weight"
        want = (
            raw.experts[EXPERT_FILES[expert]]["model.layers.1.mlp.up_proj.weight"]
            + raw.expert_scale * lora[key.format("B")] @ lora[key.format("A")]
        )
        got = model.model.layers[1].mlp.experts[expert].up_proj.weight
        torch.testing.assert_close(got, want)
    assert not torch.equal(
        model.model.layers[1].mlp.experts[2].up_proj.weight, model.model.layers[1].mlp.experts[6].up_proj.weight
    )


def test_router_lora_official_vs_merge(converted, tmp_path):
    paths, _, _, official_model = converted["interval"]
    gates = _load(paths.delta / "mlp_gates.bin")
    adapter = _load(paths.delta / "adapter_model.bin")
    router = "model.layers.0.mlp.gate"
    torch.testing.assert_close(
        official_model.model.layers[0].mlp.gate.weight, gates[f"{router}.weight"], rtol=0, atol=0
    )
    report = _convert(paths, "interval", tmp_path / "merged", router_lora="merge")
    merged = UniMoeForConditionalGeneration.from_pretrained(tmp_path / "merged")
    lora = adapter[f"base_model.model.{router}.lora_B.weight"] @ adapter[f"base_model.model.{router}.lora_A.weight"]
    torch.testing.assert_close(merged.model.layers[0].mlp.gate.weight, gates[f"{router}.weight"] + 2.0 * lora)
    assert any("same adapter as adapter_model.bin" in reason for reason in report.dropped)


# ------------------------------------------------------------------ report and Hub folder


def _read_weight_files(paths: SourcePaths) -> list[Path]:
    """The files the official loader reads weights from."""
    delta = ["adapter_model.bin", "non_lora_trainables.bin", "mm_audio_aligner.bin", "mlp_gates.bin"]
    files = sorted(paths.base.glob("pytorch_model-*.bin")) + [paths.delta / name for name in delta]
    files += sorted(paths.delta.glob("*_mlp_experts.bin")) + [paths.clip / "pytorch_model.bin"]
    files += sorted(paths.experts.glob("*.bin")) if paths.experts else []
    files += [paths.whisper / "model.safetensors"] if paths.whisper else []
    return files


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_source_tensor_is_accounted_for(converted, variant):
    paths, report, _, _ = converted[variant]
    total = sum(len(TensorFile(path).metadata()) for path in _read_weight_files(paths))
    total += len(torch.load(paths.beats, weights_only=True)["model"]) if paths.beats else 0
    dropped = [key for keys in report.dropped.values() for key in keys]
    assert len(set(dropped)) == len(dropped)
    assert report.num_consumed + len(dropped) == total
    reasons = " | ".join(report.dropped)
    assert "RoPE inverse frequencies" in reasons
    assert ("random, unused Whisper" in reasons) == (variant != "audio")
    ignored = {(i.path.parent.name, i.path.name): i.reason for i in report.ignored_files}
    assert "never unpickled" in ignored[(FOLDERS[variant][1], "training_args.bin")]
    assert "not read by the official inference loader" in ignored[(FOLDERS[variant][0], "mm_projector.bin")]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_training_args_is_never_unpickled(tmp_path, monkeypatch):
    paths = write_official_checkpoint(tmp_path / "in", "speech")
    opened = {}
    original = torch.load

    def recording_load(path, *args, **kwargs):
        opened[Path(path).name] = kwargs.get("weights_only")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    _convert(paths, "speech", tmp_path / "out")
    assert "adapter_model.bin" in opened and "training_args.bin" not in opened
    assert all(opened.values()), opened  # every pickle read with weights_only=True
    with pytest.raises(CheckpointFormatError, match="weights-only"):
        TensorFile(paths.delta / "training_args.bin").metadata()


def test_hub_folder(converted):
    paths, _, out, _ = converted["speech"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert all((out / name).is_file() for name in set(index["weight_map"].values()))
    config_text = (out / "config.json").read_text()
    assert "/path/to" not in config_text
    config = json.loads(config_text)
    assert config["auto_map"]["AutoModel"] == "modeling_unimoe.UniMoeForConditionalGeneration"
    assert config["custom_pipelines"]["any-to-text"]["impl"] == "pipeline_unimoe.AnyToTextPipeline"
    assert config["text_config"]["moe_layers"] == "all" and config["speech_query_tokens"] == DIMS.query_tokens
    assert [config[f"{m}_token_id"] for m in ("image", "video", "speech", "audio")] == [400, 401, 402, 403]
    generation = json.loads((out / "generation_config.json").read_text())
    # inference_all.py's settings on top of the base's generation_config.json (top_p 0.6) and 4.31's top_k 50
    assert (generation["do_sample"], generation["temperature"], generation["max_new_tokens"]) == (True, 0.2, 1024)
    assert (generation["top_p"], generation["top_k"]) == (0.6, 50)
    processor = out / "processor_config.json"
    image = json.loads(processor.read_text())["image_processor"] if processor.is_file() else None
    image = image or json.loads((out / "preprocessor_config.json").read_text())
    assert image["do_center_crop"] is True and image["crop_size"] == {"height": 28, "width": 28}
    card = (out / "README.md").read_text()
    assert "Uni-MoE/Uni-MoE-speech-base" in card and "Uni-MoE/Uni-MoE-speech-e2" in card
    assert (out / "modeling_unimoe.py").is_file() and (out / "tokenizer.model").is_file()
    for path in out.iterdir():  # no path of the converting machine (nor the official "/path/to/") leaks
        if path.suffix in (".json", ".md", ".jinja"):
            assert str(paths.base.parent) not in path.read_text() and "/path/to" not in path.read_text(), path.name


def test_cli_bf16_and_remote_code_load(converted, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    paths, _, _, fp32_model = converted["speech"]
    args = ["--variant", "speech", "--base", str(paths.base), "--delta", str(paths.delta), "--clip", str(paths.clip)]
    args += ["--whisper", str(paths.whisper), "--output", str(tmp_path / "out"), "--no-progress"]
    main(args)
    model = AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert type(model).__name__ == "UniMoeForConditionalGeneration" and model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.convert_tokens_to_ids("<speech>") == 402 and tokenizer.pad_token_id == 0
    input_ids = torch.randint(3, DIMS.vocab_size, (1, 6))
    with torch.no_grad():
        got, want = model(input_ids=input_ids).logits.float(), fp32_model(input_ids=input_ids).logits
    assert (got - want).abs().max() < 0.05 * want.abs().max()


# ------------------------------------------------------------------ failures


@pytest.fixture
def speech_inputs(converted, tmp_path):
    paths = converted["speech"][0]
    root = tmp_path / "in"
    shutil.copytree(paths.base.parent, root)
    return SourcePaths(
        base=root / paths.base.name,
        delta=root / paths.delta.name,
        clip=root / paths.clip.name,
        whisper=root / paths.whisper.name,
    )


def _edit_base_shard(paths: SourcePaths, edit) -> None:
    shard = paths.base / "pytorch_model-00001-of-00002.bin"
    tensors = torch.load(shard, weights_only=True)
    edit(tensors)
    torch.save(tensors, shard)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.pop("model.layers.0.self_attn.k_proj.weight"),
            r"missing keys\) \(1\):\n  - model\.layers\.0\.self_attn\.k_proj\.weight",
        ),
        (
            lambda t: t.update({"model.layers.0.mlp.experts.0.extra_proj.weight": torch.zeros(2)}),
            r"model\.layers\.0\.mlp\.experts\.0\.extra_proj\.weight",
        ),
        (
            lambda t: t.update({"model.foo.weight": torch.zeros(2)}),
            r"extra keys\) \(1\):\n  - Uni-MoE-speech-base/pytorch_model-00001-of-00002\.bin:model\.foo\.weight",
        ),
        (
            lambda t: t.update({"model.layers.0.input_layernorm.weight": torch.ones(3)}),
            r"input_layernorm\.weight has shape \[3\], model\.layers\.0\.input_layernorm\.weight needs \[32\]",
        ),
    ],
    ids=["missing", "extra-target", "extra-unknown", "shape"],
)
def test_bad_checkpoints_fail_naming_the_key(speech_inputs, tmp_path, edit, message):
    _edit_base_shard(speech_inputs, edit)
    with pytest.raises(ConversionError, match=message):
        _convert(speech_inputs, "speech", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the plan is valid


def test_wrong_variant_and_missing_inputs_fail(speech_inputs, tmp_path):
    with pytest.raises(ConversionError, match="MoE experts in layers \\[0, 1\\].*'interval'"):
        _convert(speech_inputs, "interval", tmp_path / "out")
    with pytest.raises(ConversionError, match="needs --beats"):
        convert(
            "audio",
            SourcePaths(base=speech_inputs.base, delta=speech_inputs.delta, clip=speech_inputs.clip),
            tmp_path / "o",
        )
    (speech_inputs.delta / "extra_weights.bin").write_bytes(b"")
    with pytest.raises(ConversionError, match="extra_weights.bin"):
        _convert(speech_inputs, "speech", tmp_path / "out")


# ------------------------------------------------------------------ streaming pieces


def test_shard_plan_and_writer(tmp_path):
    assert parse_size("5GB") == 5_000_000_000 and parse_size("2GiB") == 2 * 1024**3 and parse_size(7) == 7
    assert plan_shards([("a", 6), ("b", 5), ("c", 4), ("d", 20)], 10) == [["a"], ["b", "c"], ["d"]]
    writer = ShardWriter(tmp_path, [["a"], ["b", "c"]])
    writer.add("b", torch.ones(2))
    assert not any(tmp_path.iterdir())  # shard 2 waits for "c"
    writer.add("a", torch.zeros(3))
    writer.add("c", torch.full((1,), 2.0))
    writer.finish()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00002-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors",
    }
    assert index["metadata"]["total_size"] == 6 * 4
    with pytest.raises(KeyError, match="not an expected tensor"):
        writer.add("a", torch.zeros(3))
