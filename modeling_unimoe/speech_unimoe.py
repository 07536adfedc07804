"""Speech path of Uni-MoE: Whisper encoder, a Whisper-decoder query aligner, a linear projector.

    30-s chunk: log-mel (80, 3000) ─► Whisper encoder ─► (1500, 768)
                                                             │ cross-attention
    learned queries (50, 768) ─► Whisper decoder (causal self-attention) ─► (50, 768) ─► Linear ─► (50, 4096)

Every chunk becomes `speech_query_tokens` LLM tokens; an item of N chunks is N such blocks
back to back (the processor writes 50·N placeholders for it).
"""

import torch
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperDecoder


class UniMoeSpeechAligner(nn.Module):
    """Learned query embeddings read a Whisper encoder output through a Whisper decoder.

    The decoder adds its learned positions to the queries, so they differ even if initialised
    alike; its token embedding (`decoder.embed_tokens`) is never used, it is kept so official
    weights load one to one.
    """

    def __init__(self, config: WhisperConfig, num_query_tokens: int):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, config.d_model))
        self.decoder = WhisperDecoder(config)

    def forward(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """(num_chunks, 1500, d_model) encoder states → (num_chunks, num_query_tokens, d_model)."""
        queries = self.query_tokens.expand(encoder_hidden_states.shape[0], -1, -1)
        outputs = self.decoder(
            inputs_embeds=queries,
            encoder_hidden_states=encoder_hidden_states.to(queries.dtype),
            use_cache=False,
            return_dict=True,
        )
        return outputs.last_hidden_state
