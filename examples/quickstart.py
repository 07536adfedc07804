"""Writes a tiny random Uni-MoE checkpoint (unless given one), loads it the way users load a
Hub checkpoint, and answers a chat prompt with `generate`.

    python examples/quickstart.py [CHECKPOINT_DIR]

The weights are random, so the answer is noise: this shows the loading and generation path,
not a trained model (the bundled demo trains one).
"""

import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from unimoe_conversion.tiny_checkpoint import write_tiny_checkpoint

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def main() -> None:
    if len(sys.argv) > 1:
        checkpoint = Path(sys.argv[1])
    else:
        checkpoint = write_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny-unimoe")
        print(f"wrote a tiny random checkpoint to {checkpoint}")
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    text = model.config.text_config
    print(f"{type(model).__name__}: {text.num_hidden_layers} layers, {text.num_experts} experts, top-{text.num_experts_per_tok}")

    prompt = f"{SYSTEM} USER: What is in the image? ASSISTANT:"
    inputs = tokenizer(prompt, return_tensors="pt")
    torch.manual_seed(0)
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False, output_router_logits=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"USER: What is in the image?\nASSISTANT (random weights):{answer}")


if __name__ == "__main__":
    main()
