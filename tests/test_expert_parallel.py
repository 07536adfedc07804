"""Expert parallelism through transformers' `DistributedConfig`: 2 CPU processes (gloo), each
holding half of the experts of every layer, give the logits and gradients of one process.

Run by pytest, the test writes a per-expert checkpoint and launches this file under
`torch.distributed.run`; run as a script, it is the worker of one rank.
"""

import os
import subprocess
import sys

import torch

from modeling_unimoe import UniMoeConfig, UniMoeForConditionalGeneration
from unimoe_conversion.tiny_checkpoint import tiny_config

WORLD_SIZE = 2


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (the tensor itself otherwise)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def worker(checkpoint: str, batches_file: str, out_dir: str) -> None:
    from transformers.distributed import DistributedConfig

    rank = int(os.environ["RANK"])
    batches = torch.load(batches_file)  # (WORLD_SIZE, batch, length)

    def load(distributed_config: DistributedConfig) -> UniMoeForConditionalGeneration:
        config = UniMoeConfig.from_pretrained(checkpoint)
        config.text_config.experts_layout = "fused"  # the per-expert keys are merged on load
        return UniMoeForConditionalGeneration.from_pretrained(
            checkpoint, config=config, distributed_config=distributed_config
        )

    result = {}
    # Inference on one batch that both ranks share: each runs its experts, outputs all-reduced.
    model = load(DistributedConfig(tp_size=WORLD_SIZE, ep_size=WORLD_SIZE, ep_implementation="all_reduce")).eval()
    with torch.no_grad():
        result["shared_logits"] = model(batches[0]).logits

    # Data parallel + expert parallel (the multi-node training layout): each rank has its own
    # batch, and tokens travel to their experts' rank and back by all-to-all.
    model = load(DistributedConfig(fsdp_size=WORLD_SIZE, ep_size=WORLD_SIZE, ep_implementation="all_to_all"))
    experts = model.model.layers[0].mlp.experts
    result["num_local_experts"] = experts.num_experts
    result["gate_up_proj"] = local(experts.gate_up_proj.data).clone()
    result["down_proj"] = local(experts.down_proj.data).clone()
    with torch.no_grad():
        result["dp_logits"] = model.eval()(batches[rank]).logits
    loss = model.train()(batches[rank], labels=batches[rank]).loss
    loss.backward()
    result["loss"] = loss.detach()
    result["router_grad"] = model.model.layers[0].mlp.gate.weight.grad.full_tensor()
    result["gate_up_proj_grad"] = local(experts.gate_up_proj.grad)
    result["down_proj_grad"] = local(experts.down_proj.grad)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def launch(checkpoint, batches_file, out_dir) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}"]
    command += [__file__, str(checkpoint), str(batches_file), str(out_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, f"worker failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def stacked_experts(model: UniMoeForConditionalGeneration, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's per-expert weights (or gradients) in the fused shapes (E, 2I, H) and (E, H, I)."""

    def get(linear):
        return linear.weight.grad if grad else linear.weight

    experts = model.model.layers[0].mlp.experts
    gate_up = torch.stack([torch.cat([get(e.gate_proj), get(e.up_proj)]) for e in experts])
    return gate_up, torch.stack([get(e.down_proj) for e in experts])


def test_two_processes_each_hold_half_the_experts_and_match_one_process(tmp_path):
    torch.manual_seed(0)
    reference = UniMoeForConditionalGeneration(tiny_config(vision=False, speech=False, audio=False))
    reference.save_pretrained(tmp_path / "checkpoint")
    batches = torch.randint(3, 400, (WORLD_SIZE, 2, 9))
    torch.save(batches, tmp_path / "batches.pt")

    launch(tmp_path / "checkpoint", tmp_path / "batches.pt", tmp_path)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]

    with torch.no_grad():
        reference.eval()
        logits = [reference(batch).logits for batch in batches]
    reference.train()
    losses = [reference(batch, labels=batch).loss for batch in batches]
    (sum(losses) / WORLD_SIZE).backward()  # data parallelism averages the ranks' gradients
    weights, grads = stacked_experts(reference), stacked_experts(reference, grad=True)

    per_rank = reference.config.text_config.num_experts // WORLD_SIZE
    for rank, result in enumerate(results):
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        assert result["num_local_experts"] == per_rank == 2
        assert torch.equal(result["gate_up_proj"], weights[0][mine])
        assert torch.equal(result["down_proj"], weights[1][mine])
        torch.testing.assert_close(result["shared_logits"], logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result["dp_logits"], logits[rank], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result["loss"], losses[rank].detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(result["router_grad"], reference.model.layers[0].mlp.gate.weight.grad)
        torch.testing.assert_close(result["gate_up_proj_grad"], grads[0][mine], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(result["down_proj_grad"], grads[1][mine], rtol=1e-5, atol=1e-8)


if __name__ == "__main__":
    worker(*sys.argv[1:])
