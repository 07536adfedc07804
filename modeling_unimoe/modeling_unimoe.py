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
    │   └── (modality encoders and connectors, one sub-config each)
    └── lm_head

This file travels with every saved checkpoint (remote code): it imports only installed
libraries and its own siblings, and does nothing at import but define and register classes.
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
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
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_unimoe import UniMoeConfig, UniMoeTextConfig
from .moe import (
    UniMoeExpert,
    UniMoeExperts,
    UniMoeMLP,
    UniMoeRouter,
    UniMoeSparseMoeBlock,
    dispatch_to_experts,
    load_balancing_loss,
)

# Auto classes written into a saved config's `auto_map` besides AutoModel (set by
# `register_for_auto_class`), so every loading habit finds this class.
EXTRA_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForMultimodalLM")


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
    # Expert granularity: a device map may put each expert of a layer on its own device.
    _no_split_modules = ["UniMoeAttention", "UniMoeExpert", "UniMoeMLP", "UniMoeRouter"]
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
            nn.init.normal_(module.gate_up_proj, mean=0.0, std=self.config.get_text_config().initializer_range)
            nn.init.normal_(module.down_proj, mean=0.0, std=self.config.get_text_config().initializer_range)
        if isinstance(module, UniMoeRouter):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.get_text_config().initializer_range)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:
            target = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                **dict.fromkeys(EXTRA_AUTO_CLASSES, target),
            }
        return super().save_pretrained(save_directory, *args, **kwargs)


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
        self.gradient_checkpointing = False
        self.post_init()

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

    def merge_multimodal_features(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor, **media
    ) -> torch.Tensor:
        """Replaces each modality's placeholder tokens with that modality's features."""
        for modality, token_id in self.placeholder_token_ids.items():
            num_tokens = int((input_ids == token_id).sum())
            if num_tokens:
                raise ValueError(
                    f"Number of {modality} placeholder tokens and {modality} features differ: "
                    f"tokens: {num_tokens}, features: 0 (this checkpoint has no {modality} input)."
                )
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
        **kwargs,
    ) -> MoeModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        text_config = self.config.text_config
        if inputs_embeds is None:
            inputs_embeds = self.merge_multimodal_features(input_ids, self.embed_text(input_ids))

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
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

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
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        r"""
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
