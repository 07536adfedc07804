"""Generation with the KV cache vs the official style of re-encoding everything at every step.

    python benchmarks/bench_generate.py [--new-tokens 128] [--repeats 1] [--threads 1]

One text + image + speech prompt (the official chat template) on a small random Uni-MoE on CPU:
a 4-layer, 256-wide decoder with 4 experts (top-2), a 4-layer CLIP at 112 px (64 image tokens) and
a 2-layer Whisper encoder + query aligner (16 speech tokens). Two paths through `generate()`:

- cached: `use_cache=True`; media are encoded once at prefill, then each step feeds one token.
- no cache: `use_cache=False`, as the official inference scripts run (their `generate` calls keep
  `images=`/`audio=` and re-run the encoders and the whole sequence at every step).

Both generate exactly `--new-tokens` tokens greedily (`min_new_tokens = max_new_tokens`); the
benchmark checks they are the same tokens. Time to first token is measured with a streamer (the
moment `generate` emits the first new token). Numbers: median over `--repeats`, after one warm-up.
One torch thread by default: on a shared machine, small kernels on several threads mostly wait
for each other (`--threads 0` keeps torch's choice).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

from unimoe_conversion.tiny_checkpoint import build_tiny_processor, tiny_config
from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image

SMALL_VISION = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    image_size=112,
    patch_size=14,
    projection_dim=128,
)
SMALL_SPEECH = dict(
    d_model=128,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=512,
    decoder_layers=2,
    decoder_attention_heads=4,
    decoder_ffn_dim=512,
    num_mel_bins=80,
    max_source_positions=1500,
    max_target_positions=64,
    vocab_size=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)


def small_model():
    from modeling_unimoe import UniMoeForConditionalGeneration

    config = tiny_config(
        audio=False,
        vision_config=dict(SMALL_VISION),
        speech_config=dict(SMALL_SPEECH),
        speech_query_tokens=16,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    return UniMoeForConditionalGeneration(config).eval(), build_tiny_processor(config)


class FirstTokenClock(BaseStreamer):
    """Records when `generate` hands out its first new token (its first `put` is the prompt)."""

    def __init__(self):
        self.calls, self.first_token_at = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.first_token_at = time.perf_counter()

    def end(self):
        pass


def run(model, inputs, new_tokens: int, use_cache: bool) -> tuple[float, float, torch.Tensor]:
    """Seconds to the first token, total seconds, and the new token ids."""
    clock = FirstTokenClock()
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=use_cache,
            streamer=clock,
        )
    total = time.perf_counter() - start
    return clock.first_token_at - start, total, output[0, inputs["input_ids"].shape[1] :]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 = torch's choice")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor = small_model()
    with tempfile.TemporaryDirectory() as tmp:
        image = write_image(Path(tmp) / "photo.png")
        speech = write_audio(Path(tmp) / "question.wav", sine_wave(5.0)[0])
        chat = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "path": str(image)},
                    {"type": "speech", "path": str(speech)},
                    {"type": "text", "text": "Answer the spoken question about the picture."},
                ],
            }
        ]
        inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt_tokens = inputs["input_ids"].shape[1]
    print(
        f"model: {model.num_parameters() / 1e6:.1f} M parameters; prompt {prompt_tokens} tokens "
        f"({processor.image_seq_length} image, {processor.speech_tokens_per_chunk} speech); "
        f"{args.new_tokens} new tokens; {torch.get_num_threads()} threads"
    )

    run(model, inputs, 4, use_cache=True)  # warm-up
    results = {}
    for use_cache in (True, False):
        runs = [run(model, inputs, args.new_tokens, use_cache) for _ in range(args.repeats)]
        ttft = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        results[use_cache] = (ttft, total, runs[0][2])
        label = "KV cache" if use_cache else "no cache (re-encode every step)"
        print(
            f"{label:32s} time to first token {ttft * 1000:7.1f} ms   total {total:6.2f} s   "
            f"{args.new_tokens / total:7.1f} new tokens/s"
        )
    same = torch.equal(results[True][2], results[False][2])
    speedup = results[False][1] / results[True][1]
    print(f"tokens/s ratio (cache / no cache): {speedup:.1f}x; same tokens: {same}")


if __name__ == "__main__":
    main()
