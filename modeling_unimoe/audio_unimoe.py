"""General-audio path of Uni-MoE: BEATs encoder, a Q-Former with learned queries, a projector.

    30-s chunk: fbank (2998, 128) ─► BEATs ─► (1496, 768)
                                                   │ cross-attention (every 2nd layer, no mask)
    learned queries (Q, 768) ─► BLIP-2 Q-Former ─► (Q, 768) ─► Linear ─► (Q, 4096)

As in the official model the Q-Former attends to every BEATs position, padded ones included
(its encoder attention mask is all ones); BEATs itself masks the padding of the last chunk.
"""

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel


class UniMoeAudioAligner(nn.Module):
    """Learned query embeddings read BEATs features through a BLIP-2 Q-Former."""

    def __init__(self, config: Blip2QFormerConfig, num_query_tokens: int):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, config.hidden_size))
        self.qformer = Blip2QFormerModel(config)

    def forward(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """(num_chunks, patches, encoder_width) → (num_chunks, num_query_tokens, hidden_size)."""
        queries = self.query_tokens.expand(encoder_hidden_states.shape[0], -1, -1)
        outputs = self.qformer(query_embeds=queries, encoder_hidden_states=encoder_hidden_states, return_dict=True)
        return outputs.last_hidden_state
