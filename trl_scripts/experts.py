"""Stage 2 → stage 3 hand-over, on checkpoint files (no model is built, so it works the same
after DDP, FSDP or ZeRO-3 training and needs no accelerator).

    stage-2 run r (dense)  ── extract_mlp_expert ──►  mlp_expert.safetensors (r)
                                                       model.layers.{L}.mlp.{gate,up,down}_proj.weight
    base (stage 1, dense) ─┐
    expert files [f0..fE-1]┴─ assemble_moe_checkpoint ─► MoE checkpoint: expert k of layer L ← file k,
                                                         routers drawn N(0, initializer_range)
    MoE checkpoint + LoRA adapter ── merge_lora_checkpoint ──► merged checkpoint (AutoModel, remote code)

As in the official 8-expert recipe (`--mlp_dir` files `[mlp_audiocap, mlp_basev, mlp_base, ...]`),
expert k is a copy of the MLP of stage-2 run k, and one run may feed several experts. Layers
outside `moe_layers` keep the base's dense MLP.
"""

import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modeling_unimoe import UniMoeConfig

from .lora import adapter_keys_as_saved

EXPERT_FILE = "mlp_expert.safetensors"
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
DENSE_MLP_KEY = re.compile(r"model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight")
LAYER_MLP_KEY = re.compile(r"model\.layers\.(\d+)\.mlp\..+")
EXPERT_KEY = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")
WEIGHT_FILES = re.compile(r".*\.(safetensors|bin)|.*\.safetensors\.index\.json|.*\.bin\.index\.json")


# --------------------------------------------------------------------------------- files


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a saved checkpoint (one file or the shards of its index)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / shard for shard in shards]
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{model_dir} has no model.safetensors(.index.json).")
    return [single]


def read_tensors(model_dir: str | Path, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a saved checkpoint whose names `keep` accepts (all by default)."""
    tensors = {}
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if keep is None or keep(key):
                    tensors[key] = f.get_tensor(key)
    return tensors


def _copy_side_files(source: Path, target: Path, overwrite: bool = False) -> None:
    """Copies what is not weights or config: remote code, tokenizer, processor, chat template."""
    for path in source.iterdir():
        if not path.is_file() or WEIGHT_FILES.fullmatch(path.name) or path.name == "config.json":
            continue
        if overwrite or not (target / path.name).exists():
            shutil.copy2(path, target / path.name)


def _save_checkpoint(config: UniMoeConfig, tensors: dict[str, torch.Tensor], source: Path, output_dir: Path) -> Path:
    from huggingface_hub import save_torch_state_dict

    output_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(output_dir)
    save_torch_state_dict({k: v.contiguous() for k, v in tensors.items()}, output_dir, max_shard_size="5GB")
    _copy_side_files(source, output_dir, overwrite=True)
    return output_dir


def parse_moe_layers(value: str | Sequence[int]) -> str | list[int]:
    """`"all"`, `"even"`, a comma list (`"0,2,5"`), `""`/`"none"` (no MoE layer) or a list of ints."""
    if not isinstance(value, str):
        return [int(i) for i in value]
    if value in ("all", "even"):
        return value
    if value.strip().lower() in ("", "none"):
        return []
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise ValueError(f"moe_layers must be 'all', 'even' or comma-separated layer indices, got {value!r}.") from None


def _with_text_config(config: UniMoeConfig, **changes) -> UniMoeConfig:
    from huggingface_hub.errors import StrictDataclassError

    text = {**config.text_config.to_dict(), **changes}
    try:
        config.text_config = type(config.text_config).from_dict(text)
    except StrictDataclassError as err:
        raise ValueError(f"Invalid MoE settings {changes}: {err}") from err
    return config


# ------------------------------------------------------------------------------- stage 2


def extract_mlp_expert(
    model_dir: str | Path, path: str | Path | None = None, metadata: Mapping[str, str] | None = None
) -> Path:
    """Writes the dense MLP weights of a saved (stage-2) checkpoint to one safetensors file.

    Keys are `model.layers.{L}.mlp.{gate,up,down}_proj.weight`, the official Experts layout.

    Raises:
        ValueError: the checkpoint has no dense MLP (stage 2 trains a dense model, `moe_layers=[]`).
    """
    model_dir = Path(model_dir)
    path = Path(path) if path is not None else model_dir / EXPERT_FILE
    tensors = read_tensors(model_dir, DENSE_MLP_KEY.fullmatch)
    if not tensors:
        raise ValueError(f"{model_dir} has no dense MLP weights (model.layers.*.mlp.*_proj.weight).")
    config = UniMoeConfig.from_pretrained(model_dir)
    info = {
        "format": "pt",
        "unimoe": "mlp_expert",
        "num_hidden_layers": str(config.text_config.num_hidden_layers),
        **{k: str(v) for k, v in (metadata or {}).items()},
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=info)
    return path


def resolve_expert_file(path: str | Path) -> Path:
    """An expert file, or a stage-2 output folder holding `mlp_expert.safetensors`."""
    path = Path(path)
    if path.is_dir():
        path = path / EXPERT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No expert file at {path} (stage 2 writes {EXPERT_FILE} in its output_dir).")
    return path


def load_mlp_expert(path: str | Path) -> dict[str, torch.Tensor]:
    with safe_open(str(resolve_expert_file(path)), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


# ------------------------------------------------------------------------------- stage 3


def _expert_tensors(
    expert_files: Sequence[str | Path], moe_layers: list[int], shapes: dict[str, tuple[int, int]]
) -> dict[str, torch.Tensor]:
    tensors = {}
    for k, file in enumerate(expert_files):
        weights = load_mlp_expert(file)
        for layer in moe_layers:
            for proj in PROJECTIONS:
                source = f"model.layers.{layer}.mlp.{proj}.weight"
                if source not in weights:
                    raise ValueError(f"Expert file {k} ({file}) has no {source}: it must hold every MoE layer's MLP.")
                if tuple(weights[source].shape) != shapes[proj]:
                    raise ValueError(
                        f"Expert file {k} ({file}): {source} is {tuple(weights[source].shape)}, "
                        f"the model needs {shapes[proj]}."
                    )
                tensors[f"model.layers.{layer}.mlp.experts.{k}.{proj}.weight"] = weights[source]
    return tensors


def assemble_moe_checkpoint(
    base_dir: str | Path,
    expert_files: Sequence[str | Path],
    output_dir: str | Path,
    *,
    moe_layers: str | Sequence[int] = "all",
    num_experts_per_tok: int = 2,
    router_type: str = "topk_softmax",
    seed: int = 0,
    routers: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Writes a MoE checkpoint: `base_dir`'s weights, MoE MLPs whose expert k is `expert_files[k]`.

    Args:
        base_dir: the dense (stage-1) checkpoint; attention, embeddings, norms, encoders and
            connectors, and the dense MLPs of layers outside `moe_layers` come from it.
        expert_files: one stage-2 expert file (or stage-2 output folder) per expert; a file may repeat.
        output_dir: where the checkpoint goes (with the base's remote code and processor).
        moe_layers: `"all"`, `"even"` or layer indices.
        num_experts_per_tok, router_type: routing of the new MoE layers.
        seed: seed of the router initialisation, N(0, `initializer_range`).
        routers: initial router weights instead of the random draw, keyed
            `model.layers.{L}.mlp.gate.weight`, each (num_experts, hidden), one per MoE layer.

    Raises:
        ValueError: an expert file lacks a MoE layer or has the wrong shapes, or a dense layer
            has no dense MLP in the base.
    """
    base_dir, output_dir = Path(base_dir), Path(output_dir)
    if not expert_files:
        raise ValueError("assemble_moe_checkpoint needs at least one expert file.")
    config = _with_text_config(
        UniMoeConfig.from_pretrained(base_dir),
        moe_layers=parse_moe_layers(moe_layers),
        num_experts=len(expert_files),
        num_experts_per_tok=num_experts_per_tok,
        router_type=router_type,
    )
    text = config.text_config
    moe = set(text.moe_layer_indices)
    base = read_tensors(base_dir)
    tensors = {}
    for key, tensor in base.items():
        match = LAYER_MLP_KEY.fullmatch(key)
        if match is None or int(match.group(1)) not in moe:
            tensors[key] = tensor
    for layer in sorted(set(range(text.num_hidden_layers)) - moe):
        missing = [p for p in PROJECTIONS if f"model.layers.{layer}.mlp.{p}.weight" not in tensors]
        if missing:
            raise ValueError(f"Layer {layer} stays dense but {base_dir} has no dense MLP there ({missing}).")

    dtype = base["model.embed_tokens.weight"].dtype
    hidden, inner = text.hidden_size, text.intermediate_size
    shapes = {"gate_proj": (inner, hidden), "up_proj": (inner, hidden), "down_proj": (hidden, inner)}
    experts = _expert_tensors(expert_files, sorted(moe), shapes)
    tensors.update({key: value.to(dtype) for key, value in experts.items()})
    generator = torch.Generator().manual_seed(seed)
    for layer in sorted(moe):
        key = f"model.layers.{layer}.mlp.gate.weight"
        router = torch.randn(text.num_experts, hidden, generator=generator) * text.initializer_range
        if routers is not None:
            if key not in routers or tuple(routers[key].shape) != (text.num_experts, hidden):
                got = tuple(routers[key].shape) if key in routers else "missing"
                raise ValueError(f"router init {key}: expected shape {(text.num_experts, hidden)}, got {got}.")
            router = routers[key]
        tensors[key] = router.to(dtype)

    _save_checkpoint(config, tensors, base_dir, output_dir)
    provenance = {"base": str(base_dir), "experts": [str(resolve_expert_file(f)) for f in expert_files]}
    (output_dir / "unimoe_experts.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return output_dir


def densify_checkpoint(model_dir: str | Path, output_dir: str | Path, expert: int = 0) -> Path:
    """Writes a dense copy (`moe_layers=[]`) of a MoE checkpoint: every MoE layer's MLP becomes
    its expert `expert`, routers are dropped. A way to get a stage-1/2 base from a MoE model."""
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    tensors = {}
    for key, tensor in read_tensors(model_dir).items():
        match = EXPERT_KEY.fullmatch(key)
        if match is not None:
            if int(match.group(2)) == expert:
                tensors[f"model.layers.{match.group(1)}.mlp.{match.group(3)}.weight"] = tensor
        elif not key.endswith(".mlp.gate.weight"):
            tensors[key] = tensor
    config = _with_text_config(UniMoeConfig.from_pretrained(model_dir), moe_layers=[])
    text = config.text_config
    missing = [i for i in range(text.num_hidden_layers) if f"model.layers.{i}.mlp.up_proj.weight" not in tensors]
    if missing:
        raise ValueError(f"{model_dir} has no expert {expert} in layers {missing}.")
    return _save_checkpoint(config, tensors, model_dir, output_dir)


def merge_lora_checkpoint(base_dir: str | Path, adapter_dir: str | Path, output_dir: str | Path) -> Path:
    """Merges a stage-3 LoRA adapter (with its fully trained routers and projectors) into its
    base checkpoint and saves a plain checkpoint that `AutoModel.from_pretrained(...,
    trust_remote_code=True)` loads, with the base's processor files."""
    from peft import PeftModel

    from modeling_unimoe import UniMoeForConditionalGeneration

    _forget_deepspeed_zero3()
    base = UniMoeForConditionalGeneration.from_pretrained(base_dir, dtype="auto")
    with adapter_keys_as_saved(base):
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    output_dir = Path(output_dir)
    merged.save_pretrained(output_dir)
    _copy_side_files(Path(base_dir), output_dir)
    return output_dir


def _forget_deepspeed_zero3() -> None:
    # After ZeRO-3 training, `from_pretrained` would partition the model over all processes;
    # the merge runs on the main process alone, on full weights.
    try:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config
    except ImportError:  # pragma: no cover
        return
    unset_hf_deepspeed_config()


__all__ = [
    "EXPERT_FILE",
    "assemble_moe_checkpoint",
    "checkpoint_files",
    "densify_checkpoint",
    "extract_mlp_expert",
    "load_mlp_expert",
    "merge_lora_checkpoint",
    "parse_moe_layers",
    "read_tensors",
    "resolve_expert_file",
]
