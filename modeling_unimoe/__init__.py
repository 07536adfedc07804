"""Uni-MoE for Hugging Face `transformers`.

The files of this folder are also the remote code of every saved checkpoint: they import only
installed libraries and each other (`from .sibling import X`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_unimoe import UniMoeConfig, UniMoeTextConfig
from .modeling_unimoe import UniMoeForConditionalGeneration, UniMoeModel, UniMoePreTrainedModel

AutoConfig.register(UniMoeConfig.model_type, UniMoeConfig, exist_ok=True)
AutoConfig.register(UniMoeTextConfig.model_type, UniMoeTextConfig, exist_ok=True)
AutoModel.register(UniMoeConfig, UniMoeForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(UniMoeConfig, UniMoeForConditionalGeneration, exist_ok=True)

__all__ = [
    "UniMoeConfig",
    "UniMoeForConditionalGeneration",
    "UniMoeModel",
    "UniMoePreTrainedModel",
    "UniMoeTextConfig",
]
