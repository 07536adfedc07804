"""Uni-MoE for Hugging Face `transformers`.

The files of this folder are also the remote code of every saved checkpoint: they import only
installed libraries and each other (`from .sibling import X`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

from .configuration_unimoe import UniMoeConfig, UniMoeTextConfig
from .feature_extraction_unimoe import UniMoeBeatsFeatureExtractor
from .media_unimoe import MediaError, load_audio, load_image, load_video
from .modeling_unimoe import UniMoeForConditionalGeneration, UniMoeModel, UniMoePreTrainedModel
from .pipeline_unimoe import AnyToTextPipeline, register_pipeline
from .processing_unimoe import UniMoeProcessor

AutoConfig.register(UniMoeConfig.model_type, UniMoeConfig, exist_ok=True)
AutoConfig.register(UniMoeTextConfig.model_type, UniMoeTextConfig, exist_ok=True)
AutoModel.register(UniMoeConfig, UniMoeForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(UniMoeConfig, UniMoeForConditionalGeneration, exist_ok=True)
AutoProcessor.register(UniMoeConfig, UniMoeProcessor, exist_ok=True)
register_pipeline(replace=True)  # "any-to-text" runs this package's pipeline, not a checkpoint's copy

__all__ = [
    "AnyToTextPipeline",
    "MediaError",
    "UniMoeBeatsFeatureExtractor",
    "UniMoeConfig",
    "UniMoeForConditionalGeneration",
    "UniMoeModel",
    "UniMoePreTrainedModel",
    "UniMoeProcessor",
    "UniMoeTextConfig",
    "load_audio",
    "load_image",
    "load_video",
]
