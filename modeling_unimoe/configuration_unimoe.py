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
from transformers import AutoConfig, LlamaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

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


@strict
class UniMoeConfig(PreTrainedConfig):
    r"""Uni-MoE: a MoE LLaMA decoder reading text, images, video, speech and general audio.

    Sub-configs (a `None` sub-config means the checkpoint has no such encoder):
        text_config ([`UniMoeTextConfig`]): the MoE language model.
        vision_config (`CLIPVisionConfig`): image and video encoder (CLIP ViT-L/14-336).
        speech_config (`WhisperConfig`): Whisper encoder plus the Whisper decoder used as a
            query aligner (whisper-small).
        audio_config (`dict`/config, defaults to `None`): the BEATs general-audio encoder and its
            Q-Former connector (filled by the audio path).

    Placeholder tokens are added special tokens of the tokenizer beyond the LM vocabulary; the
    processor expands each media item into exactly as many placeholders as it has features and
    the model replaces them with those features.
    """

    model_type = "unimoe"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=UniMoeTextConfig),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", optional=True),
        "speech_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = field(default_factory=lambda: dict(CLIP_VIT_L_336))
    speech_config: dict | PreTrainedConfig | None = field(default_factory=lambda: dict(WHISPER_SMALL))
    audio_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    video_token_id: int = 32001
    speech_token_id: int = 32002
    audio_token_id: int = 32003
    tie_word_embeddings: bool = False

    def validate_placeholders(self):
        """Part of `@strict` validation: placeholder ids must be distinct."""
        ids = [self.image_token_id, self.video_token_id, self.speech_token_id, self.audio_token_id]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Placeholder token ids must be distinct, got {ids}.")


__all__ = ["UniMoeConfig", "UniMoeTextConfig"]
