"""BEATs general-audio encoder (Chen et al., 2022, arXiv 2212.09058), as used by Uni-MoE's audio models.

Module tree; state-dict names equal those of Microsoft's checkpoints (`BEATs_iter3_plus_AS2M.pt`):

    BeatsModel
    ├── patch_embedding        Conv2d(1, embed_dim, 16, stride 16) over (frames, mel bins)
    ├── layer_norm             LayerNorm(embed_dim) on the patches
    ├── post_extract_proj      Linear(embed_dim, encoder_embed_dim) (absent when the sizes are equal)
    └── encoder: BeatsEncoder
        ├── pos_conv.0         weight-normed grouped Conv1d (weight_g, weight_v, bias); .1 trims, .2 GELU
        ├── layers[i]: BeatsEncoderLayer
        │   ├── self_attn: BeatsAttention   q/k/v/out_proj, grep_linear, grep_a,
        │   │                               relative_attention_bias (layer 0 only, shared by all layers)
        │   ├── self_attn_layer_norm
        │   ├── fc1, fc2
        │   └── final_layer_norm
        └── layer_norm         before the first layer (post-LN) or after the last (pre-LN)

The official checkpoints store the shared relative position table under every layer's name
(`encoder.layers.{i}.self_attn.relative_attention_bias.weight`, one tensor); this model keeps it
once, in layer 0, and `unimoe_conversion.beats` checks and drops the copies on conversion.

This file travels with every saved checkpoint (remote code): it imports only installed
libraries and its own siblings, and does nothing at import but define classes.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_beats import BeatsConfig

# The official model uses torch's LayerNorm default everywhere.
LAYER_NORM_EPS = 1e-5


@dataclass
class BeatsModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_patches, encoder_embed_dim)`):
        Output of the last layer (after the final LayerNorm only when `layer_norm_first=True`).
    padding_mask (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
        Patch-level padding mask (`True` = padding) derived from the frame mask as the official code
        does (see [`patch_padding_mask`]); `None` when no frame mask was given.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Input of the first layer and output of every layer.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`, eager only):
        Attention probabilities of every layer, `(batch_size, heads, num_patches, num_patches)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    padding_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def get_num_patches(num_frames: int, num_mel_bins: int, patch_size: int = 16) -> int:
    """Patches (= output positions) the patch embedding makes of a `(num_frames, num_mel_bins)` fbank."""
    return (num_frames // patch_size) * (num_mel_bins // patch_size)


def patch_padding_mask(frame_padding_mask: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Map a frame padding mask `(batch, frames)` to patches `(batch, num_patches)`, as official BEATs does.

    The official code drops the last `frames % num_patches` frames, cuts the rest into
    `num_patches` runs of consecutive frames (pairs for a 30 s chunk: 2998 frames -> 6 dropped,
    1496 pairs) and marks patch `p` as padding when every frame of run `p` is.

    This does not follow the patch grid: patches are ordered time-major (`p = 8 * t + f` for time
    step `t` and mel band `f` of a 128-bin fbank), and patch `p` covers frames `16t .. 16t + 15`, not
    `2p, 2p + 1`. With trailing padding from frame `F0` on, patch `p` is marked iff `16t + 2f >= F0`:
    every time step with `16t >= F0` is masked, and in the time step that straddles `F0` only the
    higher mel bands are, although its lower bands contain padded frames too. Reproduced as is,
    since the released models were trained with it.
    """
    batch_size, num_frames = frame_padding_mask.shape
    if num_frames < num_patches:
        raise ValueError(
            f"A padding mask of {num_frames} frames cannot be mapped onto {num_patches} patches "
            "(the official mapping needs at least one frame per patch)."
        )
    usable = num_frames - num_frames % num_patches
    return frame_padding_mask[:, :usable].reshape(batch_size, num_patches, -1).all(dim=-1)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5-style buckets of `key - query` offsets.

    Half the buckets hold keys after the query, half keys before it. In each half the first
    `num_buckets // 4` distances get a bucket each; larger distances share log-spaced buckets, and
    every distance from `max_distance` on falls into the last one. The float32 arithmetic and its
    order follow the official code, so bucket edges match it exactly.
    """
    half = num_buckets // 2
    buckets = (relative_position > 0).long() * half
    distance = relative_position.abs()
    max_exact = half // 2
    # clamp(min=1): log(0) is never selected below, but it must not produce inf -> long casts.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (half - max_exact)).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling + position_bias + mask) v.

    The official code scales q by 1/32 and subtracts each row's maximum before scaling back, to
    keep fp16 scores finite; softmax is shift-invariant, so this is the same function.
    """
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        attn_weights = attn_weights + position_bias
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    # At least float32 for the softmax (fp16/bf16 models); float64 stays float64.
    softmax_dtype = torch.promote_types(attn_weights.dtype, torch.float32)
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=softmax_dtype).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class BeatsAttention(nn.Module):
    """Multi-head self-attention with a bucketed relative position bias and gated relative positions.

    Gated relative position bias (WavLM, "grep"): each head scales the shared bias by a gate read
    from its own (unscaled) query,

        g_a, g_b = sigmoid(sum over 4 of grep_linear(q).view(..., 2, 4))
        bias(i, j) = (g_a * (g_b * grep_a - 1) + 2) * table[bucket(j - i)]     (per head, per query i)
    """

    def __init__(self, config: BeatsConfig, has_relative_attention_bias: bool):
        super().__init__()
        self.config = config
        self.num_heads = config.encoder_attention_heads
        self.head_dim = config.encoder_embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_distance

        dim = config.encoder_embed_dim
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = config.gru_rel_pos
        if self.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(config.num_buckets, self.num_heads)

    def compute_position_bias(self, length: int) -> torch.Tensor:
        """The relative position bias table for `length` positions, `(1, heads, length, length)`."""
        weight = self.relative_attention_bias.weight
        positions = torch.arange(length, device=weight.device)
        relative_position = positions[None, :] - positions[:, None]  # key - query
        buckets = relative_position_bucket(relative_position, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def gate_position_bias(self, query: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        """Scale the shared bias per head and query; `query` is `(batch, heads, length, head_dim)` before scaling."""
        batch_size, num_heads, length, _ = query.shape
        gates = self.grep_linear(query).view(batch_size, num_heads, length, 2, 4).sum(-1).sigmoid()
        gate_a, gate_b = gates.chunk(2, dim=-1)  # (batch, heads, length, 1) each
        return (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * position_bias

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_shape = (*hidden_states.shape[:-1], self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        if position_bias is not None:
            position_bias = position_bias.to(device=query.device, dtype=query.dtype)
            if self.gru_rel_pos:
                position_bias = self.gate_position_bias(query, position_bias)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            position_bias=position_bias,
            **kwargs,
        )
        attn_output = attn_output.reshape(*hidden_states.shape[:-1], -1)
        return self.out_proj(attn_output), attn_weights


def _gelu_fp32(x: torch.Tensor) -> torch.Tensor:
    # The official "gelu" runs in float32 whatever the model dtype.
    return F.gelu(x.float()).type_as(x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def beats_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The official `get_activation_fn(name)` for the names in `BEATS_ACTIVATIONS`."""
    if name == "gelu_accurate":
        return ACT2FN["gelu_new"]  # the tanh approximation
    return {"gelu": _gelu_fp32, "relu": F.relu, "tanh": torch.tanh, "linear": _identity}[name]


class BeatsEncoderLayer(GradientCheckpointingLayer):
    """Post-LN (optionally deep-norm) or pre-LN Transformer layer.

    Post-LN with deep norm (alpha = (2 * layers) ** 0.25, the released model):

        x = LN(alpha * x + Attn(x));  x = LN(alpha * x + FFN(x))
    """

    def __init__(self, config: BeatsConfig, has_relative_attention_bias: bool):
        super().__init__()
        dim = config.encoder_embed_dim
        self.layer_norm_first = config.layer_norm_first
        self.deep_norm_alpha = (2 * config.encoder_layers) ** 0.25 if config.deep_norm else 1.0
        self.self_attn = BeatsAttention(config, has_relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.activation_fn = beats_activation(config.activation_fn)
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if self.layer_norm_first:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, _ = self.self_attn(hidden_states, attention_mask, position_bias, **kwargs)
        hidden_states = residual * self.deep_norm_alpha + self.dropout(hidden_states)
        if not self.layer_norm_first:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        residual = hidden_states
        if self.layer_norm_first:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = self.activation_dropout(self.activation_fn(self.fc1(hidden_states)))
        hidden_states = residual * self.deep_norm_alpha + self.dropout(self.fc2(hidden_states))
        if not self.layer_norm_first:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states


class BeatsWeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight normalisation over every axis but the kernel one (torch `weight_norm(dim=2)`).

    Stores `weight_g` `(1, 1, kernel)` and `weight_v` `(out, in / groups, kernel)` as the official
    checkpoints do; weight = weight_v * weight_g / ||weight_v|| (norm over out and in channels).
    """

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.conv1d(hidden_states, self.weight, self.bias, padding=self.padding, groups=self.groups)


class BeatsSamePad(nn.Module):
    """Trim the extra output step an even kernel with `padding = kernel // 2` adds, keeping the length."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[..., : hidden_states.shape[-1] - self.remove]


class _GradMultiply(torch.autograd.Function):
    """Identity forward, gradient times `scale` backward (layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx, hidden_states: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return hidden_states.view_as(hidden_states)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class BeatsEncoder(nn.Module):
    def __init__(self, config: BeatsConfig):
        super().__init__()
        dim = config.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            BeatsWeightNormConv1d(dim, config.conv_pos, config.conv_pos_groups),
            BeatsSamePad(config.conv_pos),
            nn.GELU(),
        )
        self.layers = nn.ModuleList(
            [
                BeatsEncoderLayer(config, config.relative_position_embedding and i == 0)
                for i in range(config.encoder_layers)
            ]
        )
        self.layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.config = config
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if padding_mask is not None:
            # Zeroed before the positional conv, so padded patches add nothing to their neighbours.
            hidden_states = hidden_states.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        hidden_states = hidden_states + self.pos_conv(hidden_states.transpose(1, 2)).transpose(1, 2)
        if not self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        hidden_states = self.dropout(hidden_states)

        attention_mask = None
        if padding_mask is not None:
            attention_mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden_states, attention_mask=~padding_mask
            )
        position_bias = None
        if self.config.relative_position_embedding:
            # One table for all layers; it lives in layer 0.
            position_bias = self.layers[0].self_attn.compute_position_bias(hidden_states.shape[1])

        decay = self.config.layer_wise_gradient_decay_ratio
        for layer in self.layers:
            if decay != 1.0 and torch.is_grad_enabled():
                hidden_states = _GradMultiply.apply(hidden_states, decay)
            if self.training and torch.rand([]).item() < self.config.encoder_layerdrop:
                continue
            hidden_states = layer(hidden_states, attention_mask, position_bias, **kwargs)

        if self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        return hidden_states


class BeatsPreTrainedModel(PreTrainedModel):
    config_class = BeatsConfig
    config: BeatsConfig
    base_model_prefix = "beats"
    main_input_name = "input_features"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BeatsEncoderLayer"]
    # The relative position bias is an additive float mask: SDPA takes it, flash attention does not.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_record_outputs = {
        "hidden_states": BeatsEncoderLayer,
        "attentions": OutputRecorder(BeatsAttention, index=1),
    }

    def _init_weights(self, module: nn.Module) -> None:
        # Generic init (Linear/Embedding normal(0.02), LayerNorm ones/zeros) as the official
        # `init_bert_params`; released weights always come from a checkpoint.
        super()._init_weights(module)
        if isinstance(module, BeatsAttention) and module.gru_rel_pos:
            init.ones_(module.grep_a)
        elif isinstance(module, BeatsWeightNormConv1d):
            kernel_size, channels = module.weight_v.shape[-1], module.weight_v.shape[0]
            init.normal_(module.weight_v, mean=0.0, std=math.sqrt(4.0 / (kernel_size * channels)))
            # As torch's weight_norm sets it up: the effective weight starts equal to weight_v.
            init.copy_(module.weight_g, module.weight_v.detach().norm(dim=(0, 1), keepdim=True))
            init.zeros_(module.bias)


class BeatsModel(BeatsPreTrainedModel):
    """BEATs encoder: normalised fbank `(batch, frames, 128)` -> patch features `(batch, patches, 768)`.

    Patches are 16x16 tiles of (frames, mel bins) in time-major order: 2998 frames x 128 bins ->
    187 x 8 = 1496 patches. The output is the last layer's, with no extra LayerNorm for the
    post-LN released model.
    """

    def __init__(self, config: BeatsConfig):
        super().__init__(config)
        self.patch_embedding = nn.Conv2d(
            1,
            config.embed_dim,
            kernel_size=config.input_patch_size,
            stride=config.input_patch_size,
            bias=config.conv_bias,
        )
        self.layer_norm = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS)
        self.post_extract_proj = (
            nn.Linear(config.embed_dim, config.encoder_embed_dim)
            if config.embed_dim != config.encoder_embed_dim
            else None
        )
        self.dropout_input = nn.Dropout(config.dropout_input)
        self.encoder = BeatsEncoder(config)
        self.post_init()

    def _check_inputs(self, input_features: torch.Tensor, padding_mask: torch.Tensor | None) -> None:
        patch = self.config.input_patch_size
        if input_features.dim() != 3:
            raise ValueError(
                f"input_features must be (batch, frames, mel_bins), got shape {tuple(input_features.shape)}."
            )
        batch_size, num_frames, num_mel_bins = input_features.shape
        if num_frames < patch or num_mel_bins < patch:
            raise ValueError(
                f"input_features of {num_frames} frames x {num_mel_bins} mel bins is smaller than one "
                f"{patch}x{patch} patch."
            )
        if padding_mask is None:
            return
        if padding_mask.dtype != torch.bool:
            raise ValueError(f"padding_mask must be a bool tensor (True = padding), got dtype {padding_mask.dtype}.")
        if tuple(padding_mask.shape) != (batch_size, num_frames):
            raise ValueError(
                f"padding_mask must be (batch, frames) = {(batch_size, num_frames)} like input_features, "
                f"got {tuple(padding_mask.shape)}."
            )

    @capture_outputs
    def forward(
        self,
        input_features: torch.FloatTensor,
        padding_mask: torch.BoolTensor | None = None,
        **kwargs,
    ) -> BeatsModelOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, frames, mel_bins)`):
            Normalised log-mel fbank, `(fbank - 15.41663) / (2 * 6.55582)` for the released model.
        padding_mask (`torch.BoolTensor` of shape `(batch_size, frames)`, *optional*):
            `True` marks padded frames. Mapped to patches as the official code does; padded patches
            are zeroed before the positional convolution and hidden from every attention layer as keys.
        """
        self._check_inputs(input_features, padding_mask)
        patches = self.patch_embedding(input_features.unsqueeze(1).to(self.patch_embedding.weight.dtype))
        # (batch, embed_dim, frames // 16, mel_bins // 16) -> (batch, patches, embed_dim), time-major.
        hidden_states = self.layer_norm(patches.flatten(2).transpose(1, 2))
        if padding_mask is not None:
            padding_mask = patch_padding_mask(padding_mask, hidden_states.shape[1])
        if self.post_extract_proj is not None:
            hidden_states = self.post_extract_proj(hidden_states)
        hidden_states = self.encoder(self.dropout_input(hidden_states), padding_mask, **kwargs)
        return BeatsModelOutput(last_hidden_state=hidden_states, padding_mask=padding_mask)


__all__ = [
    "BeatsModel",
    "BeatsModelOutput",
    "BeatsPreTrainedModel",
    "get_num_patches",
    "patch_padding_mask",
    "relative_position_bucket",
]
