"""`unimoe-demo` (and `python -m unimoe_demo`): the whole Uni-MoE recipe on a synthetic task, on a CPU.

    unimoe-demo [--output-dir unimoe-demo-out] [--quick] [--seed 0] [--threads N]

What it runs is `run.run_demo`; this module only reads the command line and prepares the
process before torch is imported.
"""

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    # torch's OpenMP threads spin between parallel regions by default. On a 2-core machine they
    # keep the core the DataLoader worker decodes media on: stage 1 runs 1.4x faster without
    # it. libgomp reads this once, when torch is first imported, hence the late imports below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from dataclasses import replace

    import torch

    from .run import QUICK, DemoSettings, run_demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="unimoe-demo-out", help="folder for data, checkpoints and results")
    parser.add_argument("--quick", action="store_true", help="a short run (the CI test's settings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice, usually the core count)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = replace(QUICK if args.quick else DemoSettings(), seed=args.seed)
    print(
        "Uni-MoE demo: a tiny model trained from scratch on a synthetic multimodal task.\n"
        "Its LM is first pre-trained on the task's text, and its encoders (and the speech/audio aligners) on\n"
        "labelled training media: the released model starts from pre-trained Vicuna/CLIP/Whisper/BEATs, this one\n"
        "from nothing. Then the three Uni-MoE stages run with the real trl_scripts.",
        flush=True,
    )
    run_demo(args.output_dir, settings)


if __name__ == "__main__":
    main()
