"""Uni-MoE: a LLaMA decoder with sparse MoE MLPs that reads text, images, video, speech and audio.

Module tree (state-dict names match the official checkpoints for the language model):

    UniMoeForConditionalGeneration
    ├── model: UniMoeModel
    │   ├── embed_tokens
    │   ├── layers[i]: UniMoeDecoderLayer
    │   │   ├── self_attn: UniMoeAttention            (LLaMA attention, RoPE, SDPA/eager/flash)
    │   │   └── mlp: UniMoeSparseMoeBlock | UniMoeMLP (config.text_config.moe_layers)
    │   │       ├── gate: UniMoeRouter
    │   │       └── experts: UniMoeExperts (one UniMoeExpert each) | UniMoeFusedExperts
    │   │                    (config.text_config.experts_layout)
    │   ├── norm
    │   ├── vision_tower: CLIPVisionModel                    ─┐ image + video
    │   ├── mm_projector: Linear-GELU-Linear                 ─┘ (vision_config)
    │   ├── speech_tower: WhisperEncoder                     ─┐ speech
    │   ├── speech_aligner: query_tokens + WhisperDecoder     │ (speech_config)
    │   ├── speech_projector: Linear                         ─┘
    │   ├── audio_tower: BeatsModel                          ─┐ general audio
    │   ├── audio_aligner: query_tokens + Blip2QFormerModel   │ (audio_config,
    │   └── audio_projector: Linear                          ─┘  audio_qformer_config)
    └── lm_head

Each media item is a run of placeholder tokens in `input_ids`, exactly as many as it has
feature rows; `UniMoeModel.merge_multimodal_features` encodes the media of the batch and
scatters each modality's rows into its placeholders in (batch, position) order. Encoders whose
sub-config is `None` are absent. The towers (CLIP, Whisper encoder, BEATs) are frozen at
construction; the aligners and projectors train.

This file travels with every saved checkpoint (remote code): it imports only installed
libraries and its own siblings, and does nothing at import but define and register classes.
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import Concatenate, MergeModulelist, WeightConverter
from transformers.integrations import use_experts_implementation
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .audio_unimoe import UniMoeAudioAligner
from .configuration_unimoe import UniMoeConfig, UniMoeTextConfig
from .modeling_beats import BeatsModel
from .moe import (
    UniMoeExpert,
    UniMoeExperts,
    UniMoeMLP,
    UniMoeRouter,
    UniMoeSparseMoeBlock,
    dispatch_to_experts,
    load_balancing_loss,
)
from .speech_unimoe import UniMoeSpeechAligner
from .vision_unimoe import UniMoeMultiModalProjector, pool_video_frames, select_image_features

# Auto classes written into a saved config's `auto_map` besides AutoModel (set by
# `register_for_auto_class`), so every loading habit finds this class.
EXTRA_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForMultimodalLM")

# Media inputs of `forward`, by modality. `generate()` drops them after the prefill step (the
# cache holds their effect); transformers' own list misses the audio ones.
MEDIA_INPUTS = {
    "image": ("pixel_values",),
    "video": ("pixel_values_videos",),
    "speech": ("input_features",),
    "audio": ("audio_input_features", "audio_padding_mask"),
}
MEDIA_INPUT_NAMES = tuple(name for names in MEDIA_INPUTS.values() for name in names)


class UniMoeAttention(LlamaAttention):
    """LLaMA multi-head attention (the official model copies it unchanged)."""


class UniMoeRMSNorm(LlamaRMSNorm):
    pass


@use_experts_implementation
class UniMoeFusedExperts(nn.Module):
    """All experts of a MoE layer as two 3D tensors (`text_config.experts_layout="fused"`).

    Mixtral's layout: `gate_up_proj` (E, 2·I, H) stacks each expert's [gate; up] rows and
    `down_proj` is (E, H, I). The decorator routes `forward` to the kernel named by
    `config._experts_implementation` (grouped_mm, batched_mm, ...); `forward` below is "eager".
    Expert parallelism shards both tensors on dim 0 and sets `num_experts` to the local count.
    """

    def __init__(self, config: UniMoeTextConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.gate_up_proj = nn.Parameter(
            torch.empty(config.num_experts, 2 * config.intermediate_size, config.hidden_size)
        )
        self.down_proj = nn.Parameter(torch.empty(config.num_experts, config.hidden_size, config.intermediate_size))
        self.act_fn = ACT2FN[config.hidden_act]

    def expert_forward(self, expert_id: int, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(hidden_states, self.gate_up_proj[expert_id]).chunk(2, dim=-1)
        return F.linear(self.act_fn(gate) * up, self.down_proj[expert_id])

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        experts = [partial(self.expert_forward, expert_id) for expert_id in range(self.num_experts)]
        return dispatch_to_experts(hidden_states, top_k_weights, top_k_index, experts)


# Checkpoints keep the official per-expert keys in both layouts: the fused layout merges them on
# load and `save_pretrained` splits them back. A per-expert model has none of the fused targets,
# so the loader keeps its keys as they are and these converters never fire for it.
EXPERTS_CONVERSION_MAPPING = [
    WeightConverter(
        source_patterns=["mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight"],
        target_patterns="mlp.experts.gate_up_proj",
        operations=[MergeModulelist(dim=0), Concatenate(dim=1)],
    ),
    WeightConverter(
        source_patterns="mlp.experts.*.down_proj.weight",
        target_patterns="mlp.experts.down_proj",
        operations=[MergeModulelist(dim=0)],
    ),
]
# At import, with overwrite: remote code may be imported more than once per process.
register_checkpoint_conversion_mapping("unimoe", EXPERTS_CONVERSION_MAPPING, overwrite=True)

# Expert parallelism (fused layout): each rank holds `num_experts / ep_size` experts of every
# layer, and the tokens reach them through `DistributedConfig.ep_implementation`.
FUSED_EXPERTS_EP_PLAN = {
    "layers.*.mlp.experts.gate_up_proj": "grouped_gemm",
    "layers.*.mlp.experts.down_proj": "grouped_gemm",
    "layers.*.mlp.experts": "ep_dispatch_experts",
}


class UniMoeDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: UniMoeTextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = UniMoeAttention(config=config, layer_idx=layer_idx)
        if layer_idx not in config.moe_layer_indices:
            self.mlp = UniMoeMLP(config)
        elif config.experts_layout == "fused":
            self.mlp = UniMoeSparseMoeBlock(config, UniMoeFusedExperts(config))
        else:
            self.mlp = UniMoeSparseMoeBlock(config)
        self.input_layernorm = UniMoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = UniMoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        # `.to(residual.device)`: a device map may place the attention or MLP of this layer on
        # another device than its residual stream (no-ops otherwise).
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states.to(residual.device)

        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states.to(residual.device)


class UniMoePreTrainedModel(PreTrainedModel):
    config_class = UniMoeConfig
    config: UniMoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # Expert granularity: a device map may put each expert of a layer on its own device; the
    # encoders split per layer (BEATs adds its own classes through `BeatsModel`).
    _no_split_modules = [
        "UniMoeAttention",
        "UniMoeExpert",
        "UniMoeMLP",
        "UniMoeRouter",
        "CLIPEncoderLayer",
        "CLIPVisionEmbeddings",
        "WhisperEncoderLayer",
        "WhisperDecoderLayer",
        "Blip2QFormerLayer",
    ]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "router_logits": OutputRecorder(UniMoeRouter, index=0),
        "hidden_states": UniMoeDecoderLayer,
        "attentions": UniMoeAttention,
    }

    def _check_and_adjust_experts_implementation(self, experts_implementation: str | None) -> str:
        implementation = super()._check_and_adjust_experts_implementation(experts_implementation)
        # The fused experts read the text config, which transformers does not update here (at
        # init and in `set_experts_implementation`): keep it in step with the model's.
        self.config.text_config._experts_implementation_internal = implementation
        return implementation

    def init_parallel_plans(self) -> None:
        super().init_parallel_plans()
        if self.base_model is self and self.config.text_config.experts_layout == "fused":
            self._ep_plan.update(FUSED_EXPERTS_EP_PLAN)

    def _resolve_parallel_plans(self, distributed_config):
        if distributed_config.ep_size > 1 and self.config.text_config.experts_layout != "fused":
            raise ValueError(
                f"Expert parallelism (ep_size={distributed_config.ep_size}) shards the fused experts: load with "
                "`text_config.experts_layout='fused'` (the checkpoint's per-expert keys are merged on load). "
                "The per-expert layout spreads experts over devices with `device_map` instead."
            )
        return super()._resolve_parallel_plans(distributed_config)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, UniMoeFusedExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=self.config.get_text_config().initializer_range)
            init.normal_(module.down_proj, mean=0.0, std=self.config.get_text_config().initializer_range)
        if isinstance(module, UniMoeRouter):
            init.normal_(module.weight, mean=0.0, std=self.config.get_text_config().initializer_range)
        elif isinstance(module, (UniMoeSpeechAligner, UniMoeAudioAligner)):
            # The official code starts the queries at zero; distinct random queries let a fresh
            # aligner tell them apart from the first step (BLIP-2's init).
            init.normal_(module.query_tokens, mean=0.0, std=self.config.get_text_config().initializer_range)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading replaces every parameter with a fresh, trainable one: freeze the towers again.
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_towers()
        return loaded

    def freeze_towers(self, freeze: bool = True) -> None:
        """Sets `requires_grad` of the encoder towers (CLIP, Whisper encoder, BEATs) to `not freeze`.

        The towers are frozen after construction and after `from_pretrained`, as in every
        official training stage; the aligners and projectors stay trainable. A stage that tunes
        a tower calls `freeze_towers(False)` or sets `requires_grad` on the parameters it wants.
        """
        for module in self.modules():
            if isinstance(module, UniMoeModel):
                for tower in (module.vision_tower, module.speech_tower, module.audio_tower):
                    if tower is not None:
                        tower.requires_grad_(not freeze)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Imported here, not at the top: the pipeline is only needed for saving. The import still
        # makes `hub_unimoe.py` and `pipeline_unimoe.py` part of the code copied with the model.
        from .hub_unimoe import add_custom_pipeline, write_model_card

        if self._auto_class is not None:
            target = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                **dict.fromkeys(EXTRA_AUTO_CLASSES, target),
            }
            add_custom_pipeline(self.config)
        output = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_model_card(self, save_directory)
        return output

    def push_to_hub(self, repo_id: str, *, processor=None, **kwargs):
        """Uploads `save_pretrained`'s folder (plus `processor`'s files when given) as one commit,
        with a model card naming `repo_id`. Keywords as `PreTrainedModel.push_to_hub`."""
        from .hub_unimoe import push_to_hub

        return push_to_hub(self, repo_id, processor=processor, **kwargs)


class UniMoeModel(UniMoePreTrainedModel):
    """The MoE decoder plus the modality encoders; returns the last hidden state."""

    def __init__(self, config: UniMoeConfig):
        super().__init__(config)
        text_config = config.text_config
        # The decoder layers are built from `text_config` directly (not as a sub-model), so
        # they take the attention implementation resolved for the whole model.
        if text_config._attn_implementation is None:
            text_config._attn_implementation_internal = config._attn_implementation
        self.vocab_size = text_config.vocab_size
        self.embed_tokens = nn.Embedding(text_config.vocab_size, text_config.hidden_size, text_config.pad_token_id)
        self.layers = nn.ModuleList(
            [UniMoeDecoderLayer(text_config, layer_idx) for layer_idx in range(text_config.num_hidden_layers)]
        )
        self.norm = UniMoeRMSNorm(text_config.hidden_size, eps=text_config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=text_config)
        self._build_encoders(config)
        self.gradient_checkpointing = False
        self.post_init()

    def _build_encoders(self, config: UniMoeConfig) -> None:
        """The modality paths present in `config`; towers are frozen, connectors train."""
        self.vision_tower = self.mm_projector = None
        self.speech_tower = self.speech_aligner = self.speech_projector = None
        self.audio_tower = self.audio_aligner = self.audio_projector = None
        text_width = config.text_config.hidden_size
        if config.vision_config is not None:
            self.vision_tower = CLIPVisionModel(config.vision_config)
            self.mm_projector = UniMoeMultiModalProjector(config)
        if config.speech_config is not None:
            self.speech_tower = WhisperEncoder(config.speech_config)
            self.speech_aligner = UniMoeSpeechAligner(config.speech_config, config.speech_query_tokens)
            self.speech_projector = nn.Linear(config.speech_config.d_model, text_width)
        if config.audio_config is not None:
            self.audio_tower = BeatsModel(config.audio_config)
            self.audio_aligner = UniMoeAudioAligner(config.audio_qformer_config, config.audio_query_tokens)
            self.audio_projector = nn.Linear(config.audio_qformer_config.hidden_size, text_width)
        self.freeze_towers()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @property
    def placeholder_token_ids(self) -> dict[str, int]:
        config = self.config
        return {
            "image": config.image_token_id,
            "video": config.video_token_id,
            "speech": config.speech_token_id,
            "audio": config.audio_token_id,
        }

    def embed_text(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Embeds `input_ids`; placeholder ids (beyond the LM vocabulary) get a zero row for now."""
        is_placeholder = torch.isin(
            input_ids, torch.tensor(list(self.placeholder_token_ids.values()), device=input_ids.device)
        )
        embeds = self.embed_tokens(input_ids.masked_fill(is_placeholder, 0))
        return embeds.masked_fill(is_placeholder[..., None], 0.0)

    def _require_encoder(self, modality: str, tower: nn.Module | None) -> nn.Module:
        if tower is None:
            key = "vision" if modality in ("image", "video") else modality
            raise ValueError(
                f"Got {modality} inputs, but this checkpoint has no {modality} encoder (config.{key}_config is None)."
            )
        return tower

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        """Projected CLIP features of each image.

        Args:
            pixel_values: (num_images, 3, H, W), CLIP-normalised.

        Returns:
            (num_images, config.num_media_tokens("image"), text hidden size).
        """
        tower = self._require_encoder("image", self.vision_tower)
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (num_images, 3, H, W), got shape {tuple(pixel_values.shape)}.")
        features = select_image_features(
            tower,
            pixel_values.to(tower.device, tower.dtype),
            self.config.vision_feature_layer,
            self.config.vision_feature_select_strategy,
        )
        return self.mm_projector(features)

    def get_video_features(self, pixel_values_videos: torch.FloatTensor) -> torch.Tensor:
        """Each frame through the image path, then pooled over frames (`config.video_pooling`).

        Args:
            pixel_values_videos: (num_videos, num_frames, 3, H, W).

        Returns:
            (num_videos, config.num_media_tokens("video"), text hidden size).
        """
        self._require_encoder("video", self.vision_tower)
        if pixel_values_videos.ndim != 5:
            raise ValueError(
                "pixel_values_videos must be (num_videos, num_frames, 3, H, W), "
                f"got shape {tuple(pixel_values_videos.shape)}."
            )
        num_videos, num_frames = pixel_values_videos.shape[:2]
        frame_features = self.get_image_features(pixel_values_videos.flatten(0, 1))
        return pool_video_frames(frame_features.unflatten(0, (num_videos, num_frames)), self.config.video_pooling)

    def get_speech_features(self, input_features: torch.FloatTensor) -> torch.Tensor:
        """Whisper encoder → query aligner → projector, per 30-second chunk.

        Args:
            input_features: (num_chunks, num_mel_bins, 3000) Whisper log-mel features of all
                chunks of all speech items, in order.

        Returns:
            (num_chunks, config.speech_query_tokens, text hidden size).
        """
        tower = self._require_encoder("speech", self.speech_tower)
        if input_features.ndim != 3:
            raise ValueError(
                f"input_features must be (num_chunks, num_mel_bins, frames), got shape {tuple(input_features.shape)}."
            )
        encoder_states = tower(input_features.to(tower.device, tower.dtype), return_dict=True).last_hidden_state
        return self.speech_projector(self.speech_aligner(encoder_states))

    def get_audio_features(
        self, audio_input_features: torch.FloatTensor, audio_padding_mask: torch.BoolTensor | None = None
    ) -> torch.Tensor:
        """BEATs → Q-Former with learned queries → projector, per 30-second chunk.

        Args:
            audio_input_features: (num_chunks, frames, 128) normalised fbank of all chunks of
                all audio items, in order.
            audio_padding_mask: (num_chunks, frames), True on padding frames (the last chunk
                of an item is padded to 30 s).

        Returns:
            (num_chunks, config.audio_query_tokens, text hidden size).
        """
        tower = self._require_encoder("audio", self.audio_tower)
        if audio_input_features.ndim != 3:
            raise ValueError(
                "audio_input_features must be (num_chunks, frames, mel_bins), "
                f"got shape {tuple(audio_input_features.shape)}."
            )
        if audio_padding_mask is not None:
            if audio_padding_mask.shape != audio_input_features.shape[:2]:
                raise ValueError(
                    f"audio_padding_mask must be (num_chunks, frames) = {tuple(audio_input_features.shape[:2])}, "
                    f"got {tuple(audio_padding_mask.shape)}."
                )
            audio_padding_mask = audio_padding_mask.to(tower.device, torch.bool)
        outputs = tower(
            input_features=audio_input_features.to(tower.device, tower.dtype), padding_mask=audio_padding_mask
        )
        return self.audio_projector(self.audio_aligner(outputs.last_hidden_state))

    def encode_media(
        self,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_input_features: torch.FloatTensor | None = None,
        audio_padding_mask: torch.BoolTensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Features of the given media by modality, each (items or chunks, tokens, hidden)."""
        if audio_padding_mask is not None and audio_input_features is None:
            raise ValueError("audio_padding_mask was given without audio_input_features.")
        features = {}
        if pixel_values is not None:
            features["image"] = self.get_image_features(pixel_values)
        if pixel_values_videos is not None:
            features["video"] = self.get_video_features(pixel_values_videos)
        if input_features is not None:
            features["speech"] = self.get_speech_features(input_features)
        if audio_input_features is not None:
            features["audio"] = self.get_audio_features(audio_input_features, audio_padding_mask)
        return features

    def merge_multimodal_features(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor, **media: torch.Tensor | None
    ) -> torch.Tensor:
        """Replaces each modality's placeholder tokens with that modality's features.

        The feature rows of all items of a modality (in input order) fill its placeholders in
        row-major (batch, position) order, so no chunk map is needed: an item with N chunks
        simply has N × tokens-per-chunk placeholders.

        Args:
            input_ids: (batch, seq) with placeholder runs.
            inputs_embeds: (batch, seq, hidden) text embeddings (placeholders embed to zero).
            **media: the media inputs of `forward` (`pixel_values`, `pixel_values_videos`,
                `input_features`, `audio_input_features`, `audio_padding_mask`).

        Raises:
            ValueError: a modality's placeholder count differs from its number of feature rows.
        """
        features = self.encode_media(**media)
        for modality, token_id in self.placeholder_token_ids.items():
            mask = input_ids == token_id
            num_tokens = int(mask.sum())
            rows = features.get(modality)
            num_rows = 0 if rows is None else rows.shape[0] * rows.shape[1]
            if num_tokens != num_rows:
                raise ValueError(
                    f"Number of {modality} placeholder tokens and {modality} feature rows differ: "
                    f"tokens: {num_tokens}, features: {num_rows}."
                )
            if num_rows:
                rows = rows.reshape(-1, rows.shape[-1]).to(inputs_embeds.device, inputs_embeds.dtype)
                inputs_embeds = inputs_embeds.masked_scatter(mask[..., None].to(inputs_embeds.device), rows)
        return inputs_embeds

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_input_features: torch.FloatTensor | None = None,
        audio_padding_mask: torch.BoolTensor | None = None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        media = {
            "pixel_values": pixel_values,
            "pixel_values_videos": pixel_values_videos,
            "input_features": input_features,
            "audio_input_features": audio_input_features,
            "audio_padding_mask": audio_padding_mask,
        }
        text_config = self.config.text_config
        if inputs_embeds is None:
            inputs_embeds = self.merge_multimodal_features(input_ids, self.embed_text(input_ids), **media)
        elif any(value is not None for value in media.values()):
            raise ValueError(
                "Media inputs need input_ids (their placeholders mark where the features go), not inputs_embeds."
            )

        use_cache = use_cache if use_cache is not None else text_config.use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=text_config)

        past_seen_tokens = past_key_values.get_seq_length() if past_key_values is not None else 0
        total_length = past_seen_tokens + inputs_embeds.shape[1]
        if total_length > text_config.max_position_embeddings:
            raise ValueError(
                f"Sequence of {total_length} tokens ({past_seen_tokens} cached + {inputs_embeds.shape[1]} new) is longer "
                f"than the model allows (max_position_embeddings={text_config.max_position_embeddings})."
            )
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=text_config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        return MoeModelOutputWithPast(last_hidden_state=self.norm(hidden_states), past_key_values=past_key_values)


class UniMoeForConditionalGeneration(UniMoePreTrainedModel, GenerationMixin):
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: UniMoeConfig):
        super().__init__(config)
        self.model = UniMoeModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        from .hub_unimoe import input_modalities

        self.input_modalities = input_modalities(config)  # what pipelines may feed this checkpoint
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values)

    def get_video_features(self, pixel_values_videos: torch.FloatTensor) -> torch.Tensor:
        return self.model.get_video_features(pixel_values_videos)

    def get_speech_features(self, input_features: torch.FloatTensor) -> torch.Tensor:
        return self.model.get_speech_features(input_features)

    def get_audio_features(
        self, audio_input_features: torch.FloatTensor, audio_padding_mask: torch.BoolTensor | None = None
    ) -> torch.Tensor:
        return self.model.get_audio_features(audio_input_features, audio_padding_mask)

    def _expand_inputs_for_generation(
        self,
        expand_size: int = 1,
        is_encoder_decoder: bool = False,
        input_ids: torch.LongTensor | None = None,
        **model_kwargs,
    ) -> tuple[torch.LongTensor, dict]:
        # Beam search and `num_return_sequences` repeat every sample `expand_size` times. Media
        # tensors hold items, not samples: repeat each sample's block of items (chunks) instead
        # of each item, so that rows and placeholders stay in the same order.
        media = {name: model_kwargs.pop(name) for name in MEDIA_INPUT_NAMES if model_kwargs.get(name) is not None}
        if expand_size > 1 and media:
            media = self._repeat_media_per_sample(input_ids, media, expand_size)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        return input_ids, {**model_kwargs, **media}

    def _repeat_media_per_sample(
        self, input_ids: torch.LongTensor, media: dict[str, torch.Tensor], expand_size: int
    ) -> dict[str, torch.Tensor]:
        config = self.config
        for modality, names in MEDIA_INPUTS.items():
            present = [name for name in names if name in media]
            if not present:
                continue
            # Placeholders per item (image, video) or per 30-s chunk (speech, audio).
            rows = {"speech": config.speech_query_tokens, "audio": config.audio_query_tokens}.get(modality)
            rows = rows or config.num_media_tokens(modality)
            per_sample = ((input_ids == getattr(config, f"{modality}_token_id")).sum(dim=1) // rows).tolist()
            for name in present:
                if sum(per_sample) != media[name].shape[0]:
                    raise ValueError(
                        f"{name} has {media[name].shape[0]} entries but the {modality} placeholders of the "
                        f"batch ask for {sum(per_sample)} ({per_sample} per sample)."
                    )
                blocks = media[name].split(per_sample)
                media[name] = torch.cat([block.repeat(expand_size, *[1] * (block.ndim - 1)) for block in blocks])
        return media

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        # `inputs_embeds` is named so that `generate(inputs_embeds=...)` is accepted.
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        # After the prefill the cache holds the media; only uncached decoding re-reads them.
        # (transformers drops the image, video and speech inputs itself, not the audio ones.)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for name in MEDIA_INPUT_NAMES:
                model_inputs.pop(name, None)
        return model_inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_input_features: torch.FloatTensor | None = None,
        audio_padding_mask: torch.BoolTensor | None = None,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(num_images, 3, height, width)`, *optional*):
            All images of the batch, in placeholder order (sample by sample).
        pixel_values_videos (`torch.FloatTensor` of shape `(num_videos, num_frames, 3, height, width)`, *optional*):
            All videos of the batch, in placeholder order.
        input_features (`torch.FloatTensor` of shape `(num_speech_chunks, 80, 3000)`, *optional*):
            Whisper log-mel features of every 30-second chunk of every speech item, in order.
        audio_input_features (`torch.FloatTensor` of shape `(num_audio_chunks, 2998, 128)`, *optional*):
            BEATs fbank features of every 30-second chunk of every audio item, in order.
        audio_padding_mask (`torch.BoolTensor` of shape `(num_audio_chunks, 2998)`, *optional*):
            True on the padding frames of `audio_input_features`.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets; -100 is ignored (media placeholders, prompts, padding).
        output_router_logits (`bool`, *optional*):
            Return each MoE layer's router logits and add `router_aux_loss_coef` × the
            load-balancing loss (`moe.load_balancing_loss`) to `loss`.
        """
        text_config = self.config.text_config
        if output_router_logits is None:
            output_router_logits = text_config.output_router_logits
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=output_router_logits,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            input_features=input_features,
            audio_input_features=audio_input_features,
            audio_padding_mask=audio_padding_mask,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, text_config.vocab_size, **kwargs)

        aux_loss = None
        if output_router_logits and outputs.router_logits:
            num_routed = outputs.router_logits[0].shape[0]
            mask = attention_mask if attention_mask is not None and attention_mask.numel() == num_routed else None
            # GShard (8-expert official) counts only each token's first choice.
            top_k = 1 if text_config.router_type == "gshard_top2" else text_config.num_experts_per_tok
            aux_loss = load_balancing_loss(outputs.router_logits, top_k, mask)
            if loss is not None:
                loss = loss + text_config.router_aux_loss_coef * aux_loss.to(loss.device)

        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
        )


UniMoeConfig.register_for_auto_class()
UniMoeForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "UniMoeExpert",
    "UniMoeExperts",
    "UniMoeFusedExperts",
    "UniMoeForConditionalGeneration",
    "UniMoeModel",
    "UniMoePreTrainedModel",
    "UniMoeSparseMoeBlock",
]
