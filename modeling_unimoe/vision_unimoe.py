"""Image and video path of Uni-MoE: CLIP features and the LLaVA-1.5 `mlp2x_gelu` projector.

    image (3, 336, 336) ─► CLIP ─► hidden_states[-2] ─► drop CLS ─► (576, 1024) ─► projector ─► (576, 4096)
    video (T, 3, 336, 336) ─► the same per frame ─► (T, 576, 4096) ─► mean over T ─► (576, 4096)

The official model averages the frames *after* the projector, so a video costs as many LLM
tokens as an image; `video_pooling="concat"` keeps all T·576 tokens instead.
"""

import torch
from torch import nn
from transformers import CLIPVisionModel
from transformers.activations import ACT2FN

from .configuration_unimoe import UniMoeConfig


class UniMoeMultiModalProjector(nn.Sequential):
    """Linear → activation → Linear (`mlp2x_gelu`); as an `nn.Sequential` its state-dict keys
    are the official `mm_projector.0.*` and `mm_projector.2.*`."""

    def __init__(self, config: UniMoeConfig):
        vision_width = config.vision_config.hidden_size
        text_width = config.text_config.hidden_size
        super().__init__(
            nn.Linear(vision_width, text_width),
            ACT2FN[config.projector_hidden_act],
            nn.Linear(text_width, text_width),
        )


def select_image_features(
    vision_tower: CLIPVisionModel,
    pixel_values: torch.Tensor,
    feature_layer: int,
    select_strategy: str,
) -> torch.Tensor:
    """CLIP hidden state `feature_layer` of each image, without the CLS token for `"default"`.

    Args:
        pixel_values: (num_images, 3, H, W).

    Returns:
        (num_images, num_patches, vision_width), plus one CLS row first for `"full"`.
    """
    outputs = vision_tower(pixel_values, output_hidden_states=feature_layer, return_dict=True)
    features = outputs.hidden_states[feature_layer]
    return features[:, 1:] if select_strategy == "default" else features


def pool_video_frames(frame_features: torch.Tensor, pooling: str) -> torch.Tensor:
    """Turns per-frame features into one token block per video.

    Args:
        frame_features: (num_videos, num_frames, tokens_per_frame, width) projected features.
        pooling: `"mean"` (official) averages the frames; `"concat"` lays them end to end.

    Returns:
        (num_videos, tokens_per_frame, width) for `"mean"`, (num_videos, num_frames · tokens_per_frame, width)
        for `"concat"`.
    """
    if pooling == "mean":
        return frame_features.mean(dim=1)
    num_videos, num_frames, tokens, width = frame_features.shape
    return frame_features.reshape(num_videos, num_frames * tokens, width)
