"""Loading options users pass to `from_pretrained` / `pipeline()`: dtype, device_map, low_cpu_mem_usage,
attn_implementation. Reference: the float32 sdpa model loaded without options."""

import pytest
import torch
from transformers import AutoModel, AutoProcessor, pipeline

from unimoe_processing.synthetic_media import sine_wave, write_audio, write_image


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("loading-media")
    image, speech = write_image(root / "photo.png"), write_audio(root / "question.wav", sine_wave(1.0))
    content = [{"type": "image", "path": str(image)}, {"type": "speech", "path": str(speech)}]
    return [{"role": "user", "content": [*content, {"type": "text", "text": "What is it?"}]}]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, chat):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    model = AutoModel.from_pretrained(tiny_checkpoint).eval()
    with torch.no_grad():
        return inputs, model(**inputs).logits


def logits_of(model, inputs):
    cast = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        return model(**cast).logits.float()


@pytest.mark.parametrize(
    "options",
    [{"device_map": "auto"}, {"low_cpu_mem_usage": True}, {"attn_implementation": "sdpa"}],
    ids=["device_map", "low_cpu_mem_usage", "sdpa"],
)
def test_options_that_keep_the_numbers(tiny_checkpoint, reference, options):
    inputs, expected = reference
    model = AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True, **options).eval()
    assert all(p.device.type == "cpu" for p in model.parameters())
    torch.testing.assert_close(logits_of(model, inputs), expected, rtol=0, atol=0)


def test_eager_attention_everywhere_matches_sdpa(tiny_checkpoint, reference):
    inputs, expected = reference
    model = AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True, attn_implementation="eager").eval()
    implementations = {
        model.config._attn_implementation,
        model.config.text_config._attn_implementation,
        model.model.vision_tower.config._attn_implementation,
        model.model.speech_tower.config._attn_implementation,
    }
    assert implementations == {"eager"}
    torch.testing.assert_close(logits_of(model, inputs), expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_weights(tiny_checkpoint, reference):
    inputs, expected = reference
    model = AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {torch.bfloat16}
    # bf16 keeps 8 mantissa bits: ~3 significant digits on logits of size ~0.1-1.
    torch.testing.assert_close(logits_of(model, inputs), expected, rtol=0.05, atol=0.02)


def test_pipeline_with_loading_options(tiny_checkpoint, chat):
    pipe = pipeline(
        "any-to-text",
        model=str(tiny_checkpoint),
        trust_remote_code=True,
        dtype=torch.bfloat16,
        device_map="auto",
        model_kwargs={"attn_implementation": "eager"},
    )
    out = pipe(chat, max_new_tokens=3, return_tensors=True)
    assert pipe.model.dtype == torch.bfloat16 and pipe.model.config._attn_implementation == "eager"
    assert out[0]["generated_token_ids"].shape[-1] > 3
