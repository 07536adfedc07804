"""Configuration classes for Uni-MoE.

One config class per component. Every default is the released 7B 4-expert speech model
(`Uni-MoE-speech-base` + `Uni-MoE-speech-e2`): a Vicuna-7B-v1.5 decoder whose MLPs are
4-expert top-2 MoE layers in every layer, CLIP ViT-L/14-336 for images and video,
Whisper-small for speech. The BEATs audio path is absent by default (it belongs to the
audio checkpoints).

This file travels with every saved checkpoint (remote code): it imports only installed
libraries and its own siblings.
"""

from dataclasses import field
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, Blip2QFormerConfig, LlamaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_beats import BeatsConfig

ROUTER_TYPES = ("topk_softmax", "gshard_top2")
EXPERTS_LAYOUTS = ("per_expert", "fused")


@strict
class UniMoeTextConfig(LlamaConfig):
    r"""The LLaMA decoder with sparse Mixture-of-Experts MLPs.

    Beyond [`LlamaConfig`]:
        num_experts (`int`, defaults to 4): experts per MoE layer.
        num_experts_per_tok (`int`, defaults to 2): experts each token is routed to (top-k).
        moe_layers (`"all"`, `"even"` or `list[int]`, defaults to `"all"`): which decoder layers
            have a MoE MLP; the others keep a dense LLaMA MLP. `"even"` is the layout of the
            official audio and "interval" checkpoints (layers 0, 2, 4, ...).
        router_type (`str`, defaults to `"topk_softmax"`):
            - `"topk_softmax"`: 4-expert official router, softmax over the k selected logits.
            - `"gshard_top2"`: 8-expert official (DeepSpeed GShard) router, logits computed in
              fp32, softmax over all experts, top-2 renormalised; training samples the second
              expert with Gumbel noise as DeepSpeed does, inference takes the argmax.
        router_aux_loss_coef (`float`, defaults to 0.01): weight of the load-balancing loss.
        output_router_logits (`bool`, defaults to `False`): return router logits and add the
            load-balancing loss to the LM loss.
        experts_layout (`str`, defaults to `"per_expert"`): how a MoE layer stores its experts.
            - `"per_expert"`: one `UniMoeExpert` (gate/up/down `nn.Linear`) per expert, the
              official layout: expert-level device maps, bitsandbytes and `target_modules` LoRA.
            - `"fused"`: two 3D tensors per layer (`gate_up_proj`, `down_proj`) for transformers'
              experts kernels (`experts_implementation`), expert parallelism
              (`DistributedConfig(ep_size=...)`) and PEFT `target_parameters`. Checkpoints keep
              the per-expert keys either way (converted on load and save).
    """

    model_type = "unimoe_text"

    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    pad_token_id: int | None = 0
    num_experts: int = 4
    num_experts_per_tok: int = 2
    moe_layers: Literal["all", "even"] | list[int] = "all"
    router_type: str = "topk_softmax"
    router_aux_loss_coef: float = 0.01
    output_router_logits: bool = False
    experts_layout: str = "per_expert"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if isinstance(self.moe_layers, tuple):
            self.moe_layers = list(self.moe_layers)

    @property
    def moe_layer_indices(self) -> list[int]:
        """Indices of the decoder layers whose MLP is a MoE block."""
        if self.moe_layers == "all":
            return list(range(self.num_hidden_layers))
        if self.moe_layers == "even":
            return list(range(0, self.num_hidden_layers, 2))
        return sorted(self.moe_layers)

    def validate_moe(self):
        """Part of `@strict` validation: runs when the config is built."""
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}.")
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok (top-k) must be between 1 and num_experts={self.num_experts}, "
                f"got {self.num_experts_per_tok}."
            )
        if self.router_type not in ROUTER_TYPES:
            raise ValueError(f"router_type must be one of {ROUTER_TYPES}, got {self.router_type!r}.")
        if self.router_type == "gshard_top2" and self.num_experts_per_tok != 2:
            raise ValueError(
                f"router_type='gshard_top2' routes to exactly 2 experts, got num_experts_per_tok={self.num_experts_per_tok}."
            )
        if isinstance(self.moe_layers, str) and self.moe_layers not in ("all", "even"):
            raise ValueError(f"moe_layers must be 'all', 'even' or a list of layer indices, got {self.moe_layers!r}.")
        if isinstance(self.moe_layers, list):
            bad = [i for i in self.moe_layers if not isinstance(i, int) or not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(
                    f"moe_layers has layer indices {bad} outside [0, {self.num_hidden_layers}) "
                    f"(num_hidden_layers={self.num_hidden_layers})."
                )
            if len(set(self.moe_layers)) != len(self.moe_layers):
                raise ValueError(f"moe_layers has repeated layer indices: {self.moe_layers}.")
        if self.experts_layout not in EXPERTS_LAYOUTS:
            raise ValueError(f"experts_layout must be one of {EXPERTS_LAYOUTS}, got {self.experts_layout!r}.")


# CLIP ViT-L/14 at 336 px, as `openai/clip-vit-large-patch14-336`.
CLIP_VIT_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}

# `openai/whisper-small`.
WHISPER_SMALL = {
    "d_model": 768,
    "encoder_layers": 12,
    "encoder_attention_heads": 12,
    "encoder_ffn_dim": 3072,
    "decoder_layers": 12,
    "decoder_attention_heads": 12,
    "decoder_ffn_dim": 3072,
    "num_mel_bins": 80,
    "vocab_size": 51865,
    "max_source_positions": 1500,
    "max_target_positions": 448,
}


MODALITIES = ("image", "video", "speech", "audio")
VIDEO_POOLINGS = ("mean", "concat")
VISION_FEATURE_SELECT_STRATEGIES = ("default", "full")


@strict
class UniMoeConfig(PreTrainedConfig):
    r"""Uni-MoE: a MoE LLaMA decoder reading text, images, video, speech and general audio.

    Sub-configs (a `None` sub-config means the checkpoint has no such encoder):
        text_config ([`UniMoeTextConfig`]): the MoE language model.
        vision_config (`CLIPVisionConfig`): image and video encoder (CLIP ViT-L/14-336).
        speech_config (`WhisperConfig`): Whisper encoder plus the Whisper decoder used as a
            query aligner (whisper-small).
        audio_config (`BeatsConfig`, defaults to `None`): the BEATs general-audio encoder.
        audio_qformer_config (`Blip2QFormerConfig`, defaults to `None`): the Q-Former that reads
            BEATs features with learned queries. Filled with BLIP-2's defaults (cross-attending
            to `audio_config.hidden_size`) whenever `audio_config` is set and it is not.

    Connectors (official config names in brackets):
        projector_hidden_act (`str`, defaults to `"gelu"`): activation of the two-layer image
            projector [`mm_projector_type="mlp2x_gelu"`].
        vision_feature_layer (`int`, defaults to -2): CLIP hidden state that feeds the projector
            [`mm_vision_select_layer`]; -2 is the input of the last CLIP layer.
        vision_feature_select_strategy (`str`, defaults to `"default"`): `"default"` drops the
            CLS token [`mm_vision_select_feature="patch"`], `"full"` keeps it.
        video_num_frames (`int`, defaults to 8): frames the processor samples per video.
        video_pooling (`str`, defaults to `"mean"`): `"mean"` averages the projected frames into
            one image-sized block (official); `"concat"` keeps every frame's tokens.
        speech_query_tokens (`int`, defaults to 50): learned queries of the Whisper-decoder
            aligner, i.e. LLM tokens per 30-second speech chunk [`query_tokens_size`].
        speech_max_chunks (`int`, defaults to 20): most 30-second chunks per speech item
            (10 minutes); longer input is an error.
        audio_query_tokens (`int`, defaults to 50): Q-Former queries, i.e. LLM tokens per
            30-second audio chunk [`query_tokens_size`].
        audio_max_chunks (`int`, defaults to 20): most 30-second chunks per audio item.

    Placeholder tokens are added special tokens of the tokenizer beyond the LM vocabulary; the
    processor expands each media item into exactly `num_media_tokens(modality, num_chunks)`
    placeholders and the model replaces them with that item's features.
    """

    model_type = "unimoe"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=UniMoeTextConfig),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", optional=True),
        "speech_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True),
        "audio_config": SubConfigSpec(config_class=BeatsConfig, optional=True),
        "audio_qformer_config": SubConfigSpec(config_class=Blip2QFormerConfig, optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = field(default_factory=lambda: dict(CLIP_VIT_L_336))
    speech_config: dict | PreTrainedConfig | None = field(default_factory=lambda: dict(WHISPER_SMALL))
    audio_config: dict | PreTrainedConfig | None = None
    audio_qformer_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    video_token_id: int = 32001
    speech_token_id: int = 32002
    audio_token_id: int = 32003
    projector_hidden_act: str = "gelu"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    video_num_frames: int = 8
    video_pooling: str = "mean"
    speech_query_tokens: int = 50
    speech_max_chunks: int = 20
    audio_query_tokens: int = 50
    audio_max_chunks: int = 20
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.audio_config is not None and self.audio_qformer_config is None:
            # The official Q-Former: BLIP-2's default Q-Former reading BEATs-width features.
            self.audio_qformer_config = Blip2QFormerConfig(encoder_hidden_size=self.audio_config.hidden_size)

    def validate_placeholders(self):
        """Part of `@strict` validation: placeholder ids must be distinct."""
        ids = [self.image_token_id, self.video_token_id, self.speech_token_id, self.audio_token_id]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Placeholder token ids must be distinct, got {ids}.")

    def validate_connectors(self):
        """Part of `@strict` validation: connector fields and encoder configs fit together."""
        if self.vision_feature_select_strategy not in VISION_FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy must be one of {VISION_FEATURE_SELECT_STRATEGIES}, "
                f"got {self.vision_feature_select_strategy!r}."
            )
        if self.video_pooling not in VIDEO_POOLINGS:
            raise ValueError(f"video_pooling must be one of {VIDEO_POOLINGS}, got {self.video_pooling!r}.")
        for name in (
            "video_num_frames",
            "speech_query_tokens",
            "speech_max_chunks",
            "audio_query_tokens",
            "audio_max_chunks",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.vision_config is not None:
            num_layers = self.vision_config.num_hidden_layers
            if not -(num_layers + 1) <= self.vision_feature_layer <= num_layers:
                raise ValueError(
                    f"vision_feature_layer={self.vision_feature_layer} is not a CLIP hidden state "
                    f"(the vision tower has {num_layers} layers, so {num_layers + 1} hidden states)."
                )
        if self.speech_config is not None and self.speech_query_tokens > self.speech_config.max_target_positions:
            raise ValueError(
                f"speech_query_tokens={self.speech_query_tokens} exceeds the Whisper decoder's "
                f"max_target_positions={self.speech_config.max_target_positions}."
            )
        if self.audio_qformer_config is not None:
            if self.audio_config is None:
                raise ValueError("audio_qformer_config is set but audio_config (the BEATs encoder) is None.")
            if self.audio_qformer_config.encoder_hidden_size != self.audio_config.hidden_size:
                raise ValueError(
                    f"audio_qformer_config.encoder_hidden_size={self.audio_qformer_config.encoder_hidden_size} "
                    f"differs from the BEATs width audio_config.hidden_size={self.audio_config.hidden_size}."
                )

    def num_media_tokens(self, modality: str, num_chunks: int = 1) -> int:
        """Placeholder tokens (= feature rows) of one media item.

        Args:
            modality: `"image"`, `"video"`, `"speech"` or `"audio"`.
            num_chunks: 30-second chunks of a speech or audio item; must be 1 for images and
                videos.

        Raises:
            ValueError: unknown modality, a modality this checkpoint has no encoder for, or a
                chunk count outside `[1, <modality>_max_chunks]`.
        """
        if modality not in MODALITIES:
            raise ValueError(f"Unknown modality {modality!r}; expected one of {MODALITIES}.")
        encoder_config = (
            self.audio_config
            if modality == "audio"
            else self.speech_config
            if modality == "speech"
            else self.vision_config
        )
        if encoder_config is None:
            key = {"image": "vision", "video": "vision"}.get(modality, modality)
            raise ValueError(f"This checkpoint has no {modality} encoder (config.{key}_config is None).")
        if modality in ("image", "video"):
            if num_chunks != 1:
                raise ValueError(f"{modality} items have exactly one chunk, got num_chunks={num_chunks}.")
            num_tokens = (encoder_config.image_size // encoder_config.patch_size) ** 2
            num_tokens += self.vision_feature_select_strategy == "full"  # the CLS token
            if modality == "video" and self.video_pooling == "concat":
                num_tokens *= self.video_num_frames
            return num_tokens
        max_chunks = self.speech_max_chunks if modality == "speech" else self.audio_max_chunks
        if not 1 <= num_chunks <= max_chunks:
            raise ValueError(
                f"A {modality} item has {num_chunks} chunks of 30 s; this model reads 1 to {max_chunks} "
                f"({max_chunks // 2} minutes, config.{modality}_max_chunks)."
            )
        per_chunk = self.speech_query_tokens if modality == "speech" else self.audio_query_tokens
        return per_chunk * num_chunks


__all__ = ["UniMoeConfig", "UniMoeTextConfig"]
