"""Writes a tiny random Uni-MoE checkpoint (unless given one) and answers a question about an
image and a speech clip through `pipeline("any-to-text")`, loading the folder as remote code
the way users load a Hub checkpoint.

    python examples/quickstart.py [CHECKPOINT_DIR]

The weights are random, so the answer is noise: this shows loading, media decoding and
generation end to end, not a trained model (`unimoe-demo` trains one).
"""

import sys
import tempfile
from pathlib import Path

from transformers import pipeline

from unimoe_conversion.tiny_checkpoint import write_tiny_checkpoint
from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="unimoe-quickstart-"))
    if len(sys.argv) > 1:
        checkpoint = Path(sys.argv[1])
    else:
        checkpoint = write_tiny_checkpoint(workdir / "tiny-unimoe")
        print(f"wrote a tiny random checkpoint to {checkpoint}")
    image = write_image(workdir / "quadrants.png")
    speech = write_audio(workdir / "tone.wav", sine_wave(2.0, frequency=330.0))

    chat = pipeline("any-to-text", model=str(checkpoint), trust_remote_code=True)
    text = chat.model.config.text_config
    print(
        f"{type(chat.model).__name__}: {text.num_hidden_layers} layers, {text.num_experts} experts, "
        f"top-{text.num_experts_per_tok}; inputs: {', '.join(chat.model.input_modalities)}"
    )

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(image)},
                {"type": "speech", "path": str(speech)},
                {"type": "text", "text": "What is in the image, and what does the speaker say?"},
            ],
        }
    ]
    answer = chat(text=messages, max_new_tokens=16, do_sample=False, return_full_text=False)
    print("USER: <image> <speech> What is in the image, and what does the speaker say?")
    print(f"ASSISTANT (random weights): {answer[0]['generated_text']!r}")


if __name__ == "__main__":
    main()
