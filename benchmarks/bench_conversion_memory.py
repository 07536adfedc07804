"""Peak memory of `unimoe-convert` on a multi-GB synthetic checkpoint (a manual measurement, not CI).

    python benchmarks/bench_conversion_memory.py --workdir /tmp/unimoe-mem

writes a synthetic `speech` checkpoint in the official layout whose two base shards are about
2.2 GB each (fp32), converts it to bf16 with 1 GB output shards under `/usr/bin/time -v`, and
compares the converter's maximum resident set size with the budget

    1.5 x largest input shard + largest output shard.

Needs ~7 GB of disk and ~2.5 GB of free memory for the writer (one shard at a time).
Results are recorded in docs/conversion.md.
"""

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from unimoe_conversion.official_synthetic import SyntheticDims, write_official_checkpoint

# 28 layers x (4 experts x 3 x 1024 x 2816 + 4 x 1024²) fp32 ≈ 4.3 GB in two shards.
DIMS = SyntheticDims(hidden_size=1024, intermediate_size=2816, num_hidden_layers=28, num_attention_heads=16, lora_r=8)


def max_rss_bytes(time_output: str) -> int:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_output)
    if match is None:
        raise RuntimeError(f"no maximum RSS in /usr/bin/time output:\n{time_output}")
    return int(match[1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--max-shard-size", default="1GB")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic input and the output")
    args = parser.parse_args()

    inputs, output = args.workdir / "in", args.workdir / "out"
    shutil.rmtree(args.workdir, ignore_errors=True)
    start = time.perf_counter()
    paths = write_official_checkpoint(inputs, "speech", dims=DIMS, base_shards=2)
    print(f"wrote the synthetic checkpoint in {time.perf_counter() - start:.0f} s")
    largest_input = max(p.stat().st_size for p in inputs.rglob("*") if p.suffix in (".bin", ".safetensors"))

    command = [sys.executable, "-m", "unimoe_conversion.convert_unimoe_to_hf", "--variant", "speech"]
    command += ["--base", str(paths.base), "--delta", str(paths.delta), "--clip", str(paths.clip)]
    command += ["--whisper", str(paths.whisper), "--output", str(output), "--no-progress"]
    command += ["--max-shard-size", args.max_shard_size]
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"conversion failed:\n{result.stdout}\n{result.stderr}")
    peak = max_rss_bytes(result.stderr)
    largest_output = max(p.stat().st_size for p in output.glob("*.safetensors"))
    budget = 1.5 * largest_input + largest_output
    total_input = sum(p.stat().st_size for p in paths.base.glob("pytorch_model-*.bin"))

    print(f"base shards in total:   {total_input / 1e9:6.2f} GB")
    print(f"largest input shard:    {largest_input / 1e9:6.2f} GB")
    print(f"largest output shard:   {largest_output / 1e9:6.2f} GB")
    print(f"converter peak RSS:     {peak / 1e9:6.2f} GB  (wall {seconds:.0f} s)")
    print(f"budget 1.5 x in + out:  {budget / 1e9:6.2f} GB  -> {'OK' if peak < budget else 'OVER BUDGET'}")
    if not args.keep:
        shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
