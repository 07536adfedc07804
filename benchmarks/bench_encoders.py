"""Time of each modality path at the released sizes, and its share of a full forward, on CPU.

    python benchmarks/bench_encoders.py [--batch-sizes 1 8] [--video-batch-sizes 1] [--repeats 1] [--full-depth]

Paths (fp32, inference mode, random weights, released widths):
- image: CLIP ViT-L/14-336 (24 layers, features of layer 23) + mlp2x_gelu projector → 576 tokens
- video: 8 frames through the image path, mean over frames → 576 tokens
- speech: one 30-s chunk, Whisper-small encoder (12 layers) + 50-query Whisper-decoder aligner
  (12 layers) + projector → 50 tokens
- audio: one 30-s chunk, BEATs iter3+ (12 layers) + 50-query BLIP-2 Q-Former (12 layers) +
  projector → 50 tokens

Depth. A full-depth run with batch 8 takes far more than a few minutes on 2 cores, so by default
every encoder stack of a path is built with 1 and then 3 layers, and the released depth is
extrapolated linearly: t(L) = t(1) + (L - 1)·(t(3) - t(1)) / 2 (L = 24 for CLIP; 12 for the
Whisper encoder + decoder and for BEATs + Q-Former, which are scaled together). Layers of a stack
have the same shapes, except that the Q-Former cross-attends in every other layer and BEATs
computes its relative positions in the first one; averaging layers 2 and 3 covers both.
`--full-depth` measures the released depth directly.

Each time is reported twice: wall clock, and the CPU time of this process (all threads). On a
machine shared with other jobs the wall time grows with the load while the CPU time does not,
so shares are computed from CPU time. Without other load, wall ≈ CPU / threads.

"ms / item" is the median over `--repeats` calls of `get_<modality>_features` on a batch, divided
by the batch size, after one batch-1 warm-up call per path. A batch of 8 videos is 64 CLIP
passes, so videos are timed at batch 1 unless `--video-batch-sizes 1 8` is given.

Share of a full forward: batch 1, one media item plus 40 text tokens, as in a generation prefill
(logits of the last position only). The language model is timed as 32 × one released-size MoE
decoder layer (4 experts, top-2) on that sequence, plus embedding and LM head; a 32-layer fp32
7B model does not fit the benchmark machine's memory.
"""

import argparse
import statistics
import time

import torch
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from modeling_unimoe import UniMoeConfig, UniMoeForConditionalGeneration
from modeling_unimoe.configuration_unimoe import CLIP_VIT_L_336, WHISPER_SMALL
from modeling_unimoe.modeling_unimoe import UniMoeDecoderLayer

TEXT_TOKENS = 40
RELEASED_LLM_LAYERS = 32
MODALITIES = ("image", "video", "speech", "audio")
# Layers of each path's stacks at the released size (stacks of one path are scaled together).
RELEASED_DEPTH = {"image": 24, "video": 24, "speech": 12, "audio": 12}


def build_encoders(depth: int | None) -> UniMoeForConditionalGeneration:
    """Released encoders and connectors (every stack at `depth` layers, or released depth for None)
    in front of a 4096-wide language model with no decoder layers."""
    vision, speech, qformer, audio = dict(CLIP_VIT_L_336), dict(WHISPER_SMALL), {}, {}
    if depth is not None:
        vision["num_hidden_layers"] = depth
        speech.update(encoder_layers=depth, decoder_layers=depth)
        qformer["num_hidden_layers"] = depth
        audio["encoder_layers"] = depth
    config = UniMoeConfig(
        text_config={"num_hidden_layers": 0},
        vision_config=vision,
        speech_config=speech,
        audio_config=audio,
        audio_qformer_config={**qformer, "encoder_hidden_size": 768},
    )
    torch.manual_seed(0)
    return UniMoeForConditionalGeneration(config).eval()


def median_seconds(fn, repeats: int, warm_up: bool = True) -> torch.Tensor:
    """Median (wall, CPU) seconds of `fn()`."""
    if warm_up:
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return torch.tensor([statistics.median(walls), statistics.median(cpus)], dtype=torch.float64)


def media_inputs(modality: str, batch: int) -> tuple[torch.Tensor, ...]:
    if modality == "image":
        return (torch.randn(batch, 3, 336, 336),)
    if modality == "video":
        return (torch.randn(batch, 8, 3, 336, 336),)
    if modality == "speech":
        return (torch.randn(batch, 80, 3000),)
    return torch.randn(batch, 2998, 128), torch.zeros(batch, 2998, dtype=torch.bool)


def path_seconds(models: dict, modality: str, batch: int, repeats: int) -> torch.Tensor:
    """(wall, CPU) seconds per item of one path at the released depth, measured or extrapolated."""
    inputs = media_inputs(modality, batch)

    def timed(model: UniMoeForConditionalGeneration) -> torch.Tensor:
        features = getattr(model, f"get_{modality}_features")
        if batch == 1:
            features(*inputs)  # warm-up
        return median_seconds(lambda: features(*inputs), repeats, warm_up=False) / batch

    if "full" in models:
        return timed(models["full"])
    one, three = timed(models[1]), timed(models[3])
    return one + (RELEASED_DEPTH[modality] - 1) * (three - one) / 2


def language_model_seconds(seq_len: int, repeats: int, warm_up: bool = True) -> torch.Tensor:
    """(wall, CPU) seconds of 32 released-size MoE decoder layers (one timed) + embedding and
    last-position LM head."""
    text_config = UniMoeConfig().text_config
    text_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer = UniMoeDecoderLayer(text_config, layer_idx=0).eval()
    for param in layer.parameters():
        torch.nn.init.normal_(param, std=0.02)
    embed = torch.nn.Embedding(text_config.vocab_size, text_config.hidden_size)
    head = torch.nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=False)
    ids = torch.randint(3, text_config.vocab_size, (1, seq_len))
    position_ids = torch.arange(seq_len)[None]
    hidden = embed(ids)
    position_embeddings = LlamaRotaryEmbedding(text_config)(hidden, position_ids=position_ids)
    per_layer = median_seconds(
        lambda: layer(hidden, position_ids=position_ids, position_embeddings=position_embeddings), repeats, warm_up
    )
    ends = median_seconds(lambda: head(embed(ids)[:, -1:]), repeats)
    return RELEASED_LLM_LAYERS * per_layer + ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="1 first: it warms up")
    parser.add_argument("--video-batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--full-depth", action="store_true", help="measure the released depth (slow)")
    args = parser.parse_args()

    models = {"full": build_encoders(None)} if args.full_depth else {1: build_encoders(1), 3: build_encoders(3)}
    config = next(iter(models.values())).config
    depth = "measured at released depth" if args.full_depth else "extrapolated from 1- and 3-layer stacks"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, random weights; {depth}\n")

    print("| path | batch | wall ms / item | CPU ms / item | LLM tokens / item |")
    print("|---|---|---|---|---|")
    batch_one = {}
    with torch.inference_mode():
        for modality in args.modalities:
            for batch in args.video_batch_sizes if modality == "video" else args.batch_sizes:
                wall, cpu = path_seconds(models, modality, batch, args.repeats).tolist()
                if batch == 1:
                    batch_one[modality] = cpu
                tokens = config.num_media_tokens(modality)
                print(f"| {modality} | {batch} | {1000 * wall:.0f} | {1000 * cpu:.0f} | {tokens} |", flush=True)

        if not batch_one:
            return
        print(f"\nShare of a full forward (batch 1, one item + {TEXT_TOKENS} text tokens, prefill):\n")
        print("| path | sequence | path CPU ms | language model CPU ms (32 layers) | share of the forward |")
        print("|---|---|---|---|---|")
        seq_lens = {modality: 1 + config.num_media_tokens(modality) + TEXT_TOKENS for modality in batch_one}
        # Shortest first: it warms the decoder layer up for the longer ones.
        llm = {}
        for seq_len in sorted(set(seq_lens.values())):
            llm[seq_len] = language_model_seconds(seq_len, args.repeats, warm_up=not llm)[1].item()
        for modality, path in batch_one.items():
            seq_len = seq_lens[modality]
            share = path / (path + llm[seq_len])
            print(
                f"| {modality} | {seq_len} | {1000 * path:.0f} | {1000 * llm[seq_len]:.0f} | {share:.1%} |", flush=True
            )


if __name__ == "__main__":
    main()
