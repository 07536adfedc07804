"""BEATs encoder: official key layout, checkpoint loading, and forward against a hand-written reference."""

import logging
import math

import pytest
import torch
from torch.nn import functional as F
from transformers.masking_utils import create_bidirectional_mask

from modeling_unimoe.configuration_beats import BeatsConfig
from modeling_unimoe.modeling_beats import BeatsModel, get_num_patches, patch_padding_mask, relative_position_bucket
from unimoe_conversion.beats import load_official_beats_checkpoint

# A tiny official-style `cfg` dict (the keys an official checkpoint stores).
TINY_OFFICIAL_CFG = {
    "input_patch_size": 16,
    "embed_dim": 16,
    "conv_bias": False,
    "encoder_layers": 2,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 4,
    "activation_fn": "gelu",
    "layer_wise_gradient_decay_ratio": 0.6,
    "layer_norm_first": False,
    "deep_norm": True,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "conv_pos": 8,
    "conv_pos_groups": 4,
    "relative_position_embedding": True,
    "num_buckets": 16,
    "max_distance": 20,
    "gru_rel_pos": True,
    "finetuned_model": False,
}

# Every key of the official state dict for TINY_OFFICIAL_CFG, written out by hand.
_LAYER_KEYS = [
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.out_proj.weight",
    "self_attn.out_proj.bias",
    "self_attn.grep_linear.weight",
    "self_attn.grep_linear.bias",
    "self_attn.grep_a",
    "self_attn.relative_attention_bias.weight",  # one shared tensor, stored under every layer
    "self_attn_layer_norm.weight",
    "self_attn_layer_norm.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
    "final_layer_norm.weight",
    "final_layer_norm.bias",
]
OFFICIAL_KEYS = {
    "patch_embedding.weight",
    "layer_norm.weight",
    "layer_norm.bias",
    "post_extract_proj.weight",
    "post_extract_proj.bias",
    "encoder.pos_conv.0.weight_g",
    "encoder.pos_conv.0.weight_v",
    "encoder.pos_conv.0.bias",
    "encoder.layer_norm.weight",
    "encoder.layer_norm.bias",
} | {f"encoder.layers.{i}.{key}" for i in range(2) for key in _LAYER_KEYS}
SHARED_BIAS_COPY = "encoder.layers.1.self_attn.relative_attention_bias.weight"


def tiny_model(seed: int = 0, attn_implementation: str = "eager", **overrides) -> BeatsModel:
    """A tiny BeatsModel with every parameter random (norm weights, biases and gates included)."""
    config = BeatsConfig.from_official_cfg({**TINY_OFFICIAL_CFG, **overrides})
    model = BeatsModel(config).eval()
    model.set_attn_implementation(attn_implementation)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.3 * noise)
    return model


def official_state_dict(model: BeatsModel) -> dict[str, torch.Tensor]:
    """The model's weights as the official code stores them (shared table under every layer)."""
    state_dict = dict(model.state_dict())
    state_dict[SHARED_BIAS_COPY] = state_dict["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    return state_dict


# ---------------------------------------------------------------- independent reference


def reference_bucket(offset: int, num_buckets: int, max_distance: int) -> int:
    """T5-style bidirectional bucket of one `key - query` offset, in plain Python."""
    half = num_buckets // 2
    bucket = half if offset > 0 else 0
    distance = abs(offset)
    exact = half // 2
    if distance < exact:
        return bucket + distance
    return bucket + min(
        half - 1, exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact))
    )


def reference_layer(
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    table: torch.Tensor,
    key_padding: torch.Tensor | None,
    heads: int,
    alpha: float,
    num_buckets: int,
    max_distance: int,
) -> torch.Tensor:
    """Post-LN deep-norm layer with gated relative position bias, with plain tensor ops."""
    batch, length, dim = x.shape
    head_dim = dim // heads

    def proj(name, h):
        return h @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    def split(h):
        return h.reshape(batch, length, heads, head_dim).permute(0, 2, 1, 3)

    q, k, v = (split(proj(f"self_attn.{n}_proj", x)) for n in "qkv")
    scores = (q / math.sqrt(head_dim)) @ k.transpose(-1, -2)

    buckets = torch.tensor(
        [[reference_bucket(j - i, num_buckets, max_distance) for j in range(length)] for i in range(length)]
    )
    bias = table[buckets].permute(2, 0, 1)  # (heads, query, key)
    gates = torch.sigmoid(proj("self_attn.grep_linear", q).reshape(batch, heads, length, 2, 4).sum(-1))
    gate = gates[..., :1] * (gates[..., 1:] * params["self_attn.grep_a"] - 1.0) + 2.0
    scores = scores + gate * bias
    if key_padding is not None:
        scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
    attn = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(batch, length, dim)

    def layer_norm(h, name):
        return F.layer_norm(h, (dim,), params[f"{name}.weight"], params[f"{name}.bias"], eps=1e-5)

    x = layer_norm(alpha * x + proj("self_attn.out_proj", attn), "self_attn_layer_norm")
    ffn = proj("fc2", F.gelu(proj("fc1", x)))
    return layer_norm(alpha * x + ffn, "final_layer_norm")


def reference_forward(model: BeatsModel, fbank: torch.Tensor, frame_padding: torch.Tensor | None) -> torch.Tensor:
    """The whole encoder from the official description, reading weights from `model.state_dict()`."""
    sd, cfg = model.state_dict(), model.config
    dim, patch = cfg.encoder_embed_dim, cfg.input_patch_size
    x = F.conv2d(fbank[:, None], sd["patch_embedding.weight"], stride=patch)  # (B, E, T', F')
    x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # time-major patches
    x = F.layer_norm(x, (cfg.embed_dim,), sd["layer_norm.weight"], sd["layer_norm.bias"], eps=1e-5)
    x = x @ sd["post_extract_proj.weight"].T + sd["post_extract_proj.bias"]
    key_padding = None
    if frame_padding is not None:
        batch, frames = frame_padding.shape
        groups = frames // x.shape[1]
        key_padding = frame_padding[:, : groups * x.shape[1]].reshape(batch, x.shape[1], groups).all(-1)
        x = x * ~key_padding[..., None]
    v, g = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"]
    weight = g * v / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    conv = F.conv1d(
        x.transpose(1, 2), weight, sd["encoder.pos_conv.0.bias"], padding=cfg.conv_pos // 2, groups=cfg.conv_pos_groups
    )
    conv = conv[..., : x.shape[1]]  # even kernel: one extra step at the end
    x = x + F.gelu(conv).transpose(1, 2)
    x = F.layer_norm(x, (dim,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"], eps=1e-5)
    table = sd["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    alpha = (2 * cfg.encoder_layers) ** 0.25
    for i in range(cfg.encoder_layers):
        prefix = f"encoder.layers.{i}."
        params = {k[len(prefix) :]: t for k, t in sd.items() if k.startswith(prefix)}
        x = reference_layer(
            params, x, table, key_padding, cfg.encoder_attention_heads, alpha, cfg.num_buckets, cfg.max_distance
        )
    return x


# ---------------------------------------------------------------- key layout and checkpoint loading


def test_official_checkpoint_loads_strictly(tmp_path):
    model = tiny_model()
    official = official_state_dict(model)
    assert set(official) == OFFICIAL_KEYS
    assert set(model.state_dict()) == OFFICIAL_KEYS - {SHARED_BIAS_COPY}
    shapes = {k: tuple(t.shape) for k, t in official.items()}
    assert shapes["encoder.pos_conv.0.weight_g"] == (1, 1, 8)
    assert shapes["encoder.pos_conv.0.weight_v"] == (32, 8, 8)
    assert shapes["encoder.layers.0.self_attn.grep_a"] == (1, 4, 1, 1)
    assert shapes["encoder.layers.0.self_attn.grep_linear.weight"] == (8, 8)
    assert shapes["encoder.layers.0.self_attn.relative_attention_bias.weight"] == (16, 4)
    assert shapes["patch_embedding.weight"] == (16, 1, 16, 16)

    path = tmp_path / "BEATs_tiny.pt"
    torch.save({"cfg": dict(TINY_OFFICIAL_CFG), "model": official}, path)
    config, state_dict = load_official_beats_checkpoint(path)
    assert config.to_official_cfg() == {**config.to_official_cfg(), **TINY_OFFICIAL_CFG}
    loaded = BeatsModel(config).eval()
    loaded.set_attn_implementation("eager")
    loaded.load_state_dict(state_dict, strict=True)

    fbank = torch.randn(1, 40, 128)
    torch.testing.assert_close(loaded(fbank).last_hidden_state, model(fbank).last_hidden_state, rtol=0, atol=0)


def test_loader_checks_shared_table_and_classifier(tmp_path):
    model = tiny_model()
    official = official_state_dict(model)

    bad = dict(official, **{SHARED_BIAS_COPY: official[SHARED_BIAS_COPY] + 1})
    torch.save({"cfg": TINY_OFFICIAL_CFG, "model": bad}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="relative position table"):
        load_official_beats_checkpoint(tmp_path / "bad.pt")

    finetuned = dict(official, **{"predictor.weight": torch.zeros(527, 32), "predictor.bias": torch.zeros(527)})
    torch.save({"cfg": {**TINY_OFFICIAL_CFG, "finetuned_model": True}, "model": finetuned}, tmp_path / "ft.pt")
    with pytest.raises(ValueError, match="classifier"):
        load_official_beats_checkpoint(tmp_path / "ft.pt")
    _, state_dict = load_official_beats_checkpoint(tmp_path / "ft.pt", drop_classifier=True)
    BeatsModel(BeatsConfig.from_official_cfg(TINY_OFFICIAL_CFG)).load_state_dict(state_dict, strict=True)

    torch.save(official, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="'cfg' and 'model'"):
        load_official_beats_checkpoint(tmp_path / "bare.pt")


def test_from_official_cfg_fills_official_class_defaults(caplog):
    with caplog.at_level(logging.WARNING):
        config = BeatsConfig.from_official_cfg({"input_patch_size": 16, "future_option": 3})
    # Missing keys take the official class defaults, not the AS2M checkpoint values.
    assert (config.deep_norm, config.relative_position_embedding, config.gru_rel_pos) == (False, False, False)
    assert (config.max_distance, config.dropout, config.encoder_layerdrop) == (1280, 0.1, 0.0)
    assert config.future_option == 3 and "future_option" in caplog.text

    default = BeatsConfig()  # the released BEATs_iter3_plus_AS2M architecture
    assert (default.encoder_layers, default.encoder_embed_dim, default.embed_dim, default.input_patch_size) == (
        12,
        768,
        512,
        16,
    )
    assert (default.deep_norm, default.layer_norm_first, default.num_buckets, default.max_distance) == (
        True,
        False,
        320,
        800,
    )
    with pytest.raises(Exception, match="deep_norm"):
        BeatsConfig(layer_norm_first=True)


# ---------------------------------------------------------------- forward


def test_relative_position_buckets_of_released_config():
    # 320 buckets, max distance 800: 160 per direction, 80 exact distances, then
    # 80 + floor(log(d / 80) / log(10) * 80), at most 159; keys after the query add 160.
    offsets = torch.tensor([0, -1, 1, -79, 79, -80, 80, -200, 200, -799, -800, -5000, 5000])
    expected = torch.tensor([0, 1, 161, 79, 239, 80, 240, 111, 271, 159, 159, 159, 319])
    assert torch.equal(relative_position_bucket(offsets, 320, 800), expected)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_layer_matches_reference(attn_implementation):
    model = tiny_model(attn_implementation=attn_implementation)
    layer = model.encoder.layers[1]  # uses the table that lives in layer 0
    x = torch.randn(2, 32, 32)
    key_padding = torch.zeros(2, 32, dtype=torch.bool)
    key_padding[1, 20:] = True
    mask = create_bidirectional_mask(config=model.config, inputs_embeds=x, attention_mask=~key_padding)
    position_bias = model.encoder.layers[0].self_attn.compute_position_bias(32)
    with torch.no_grad():
        out = layer(x, mask, position_bias)
    params = {k: t for k, t in layer.state_dict().items()}
    table = model.encoder.layers[0].self_attn.relative_attention_bias.weight.detach()
    expected = reference_layer(
        params, x, table, key_padding, heads=4, alpha=math.sqrt(2), num_buckets=16, max_distance=20
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_model_matches_reference(attn_implementation):
    model = tiny_model(attn_implementation=attn_implementation)
    fbank = torch.randn(2, 70, 128)
    frame_padding = torch.zeros(2, 70, dtype=torch.bool)
    frame_padding[1, 41:] = True
    with torch.no_grad():
        out = model(fbank, padding_mask=frame_padding).last_hidden_state
    torch.testing.assert_close(out, reference_forward(model, fbank, frame_padding), rtol=1e-5, atol=1e-5)


def test_output_shapes_and_patch_mask():
    model = tiny_model()
    # 70 frames x 128 bins -> 4 x 8 = 32 patches; the mask drops 70 % 32 = 6 frames and groups
    # frames in pairs: patch p is padding iff frames 2p and 2p + 1 are. Padding from frame 41 on
    # -> patches 21..31 (patch 20 = frames 40, 41 keeps frame 40).
    fbank = torch.randn(2, 70, 128)
    frame_padding = torch.zeros(2, 70, dtype=torch.bool)
    frame_padding[1, 41:] = True
    expected = torch.zeros(2, 32, dtype=torch.bool)
    expected[1, 21:] = True
    with torch.no_grad():
        one = model(fbank[:1])
        two = model(fbank, padding_mask=frame_padding)
    assert one.last_hidden_state.shape == (1, 32, 32) and one.padding_mask is None
    assert two.last_hidden_state.shape == (2, 32, 32)
    assert torch.equal(two.padding_mask, expected)
    # Unpadded chunk 0 is unaffected by chunk 1 sharing the batch.
    torch.testing.assert_close(two.last_hidden_state[0], one.last_hidden_state[0], rtol=1e-5, atol=1e-5)


def test_released_chunk_size_mask():
    # 30 s chunk: 2998 frames -> 187 x 8 = 1496 patches; 6 frames dropped, pairs of frames.
    assert get_num_patches(2998, 128) == 1496
    frame_padding = torch.zeros(1, 2998, dtype=torch.bool)
    frame_padding[0, 1001:] = True  # 10 s of audio plus one frame
    expected = torch.zeros(1, 1496, dtype=torch.bool)
    expected[0, 501:] = True  # patch 500 = frames 1000, 1001
    assert torch.equal(patch_padding_mask(frame_padding, 1496), expected)
    model = tiny_model()
    with torch.no_grad():
        out = model(torch.randn(1, 2998, 128), padding_mask=frame_padding)
    assert out.last_hidden_state.shape == (1, 1496, 32)
    assert torch.equal(out.padding_mask, expected)


def test_padding_invariance():
    """Trailing padding that starts on a 16-frame time step is invisible to the real patches.

    With padding from frame F0 = 16 * n, the mapped mask covers exactly the time steps >= n, which
    are zeroed before the (zero-padded) positional conv and never attended to: the real patches
    equal those of the unpadded audio. When F0 is not a multiple of 16, the time step straddling F0
    has unmasked low-band patches that contain padded frames (official behaviour), so the padded
    values do leak into the output.
    """
    model = tiny_model()
    fbank = torch.randn(1, 96, 128)  # 6 time steps, 48 patches
    frame_padding = torch.zeros(1, 96, dtype=torch.bool)
    frame_padding[0, 64:] = True  # 4 real time steps = 32 patches
    noisy = fbank.clone()
    noisy[0, 64:] = 100 * torch.randn(32, 128)
    with torch.no_grad():
        short = model(fbank[:, :64]).last_hidden_state
        padded = model(fbank, padding_mask=frame_padding)
        padded_noisy = model(noisy, padding_mask=frame_padding).last_hidden_state
    assert padded.padding_mask[0].nonzero().squeeze(-1).tolist() == list(range(32, 48))
    torch.testing.assert_close(padded.last_hidden_state[:, :32], short, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded_noisy[:, :32], short, rtol=1e-5, atol=1e-5)

    frame_padding[0, 60:] = True  # F0 = 60: patches 30, 31 (t = 3, f = 6, 7) are masked, 24..29 are not
    noisy[0, 60:64] = 100.0
    with torch.no_grad():
        a = model(fbank, padding_mask=frame_padding)
        b = model(noisy, padding_mask=frame_padding).last_hidden_state
    assert a.padding_mask[0].nonzero().squeeze(-1).tolist() == list(range(30, 48))
    assert not torch.allclose(a.last_hidden_state[:, :30], b[:, :30], atol=1e-3)


def test_hidden_states_and_save_pretrained(tmp_path):
    model = tiny_model(attn_implementation="sdpa")
    fbank = torch.randn(1, 40, 128)
    with torch.no_grad():
        out = model(fbank, output_hidden_states=True)
    assert len(out.hidden_states) == 3  # layer-0 input + 2 layers
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)

    model.save_pretrained(tmp_path)
    reloaded = BeatsModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(fbank).last_hidden_state, out.last_hidden_state, rtol=0, atol=0)


def test_bad_inputs_raise():
    model = tiny_model()
    fbank = torch.randn(1, 40, 128)
    with pytest.raises(ValueError, match="batch, frames, mel_bins"):
        model(fbank[0])
    with pytest.raises(ValueError, match="smaller than one"):
        model(fbank[:, :10])
    with pytest.raises(ValueError, match="bool"):
        model(fbank, padding_mask=torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="padding_mask must be"):
        model(fbank, padding_mask=torch.zeros(1, 39, dtype=torch.bool))
