"""Replays the official Uni-MoE load order on the *lists* of the input tensors.

`OfficialCheckpoint(variant, paths).collect()` checks every input folder (each file used or
ignored for a stated reason), lists every weight file, and routes each tensor into a
`ConversionPlan` in the order the official loader applies them:

    [Whisper decoder] -> base shards -> [8e: Experts files + per-expert LoRA] -> non_lora_trainables
      -> PEFT adapter (LoRA merged into its targets) -> mm_audio_aligner -> mlp_gates -> CLIP [-> BEATs]
"""

from dataclasses import dataclass
from pathlib import Path

from modeling_unimoe.configuration_beats import BeatsConfig

from .beats import convert_official_beats_state_dict
from .checkpoint_io import TensorFile, load_pickle
from .hub_files import read_json
from .official_layout import (
    BASE_IGNORED,
    BEATS_SHARED_COPY,
    DELTA_IGNORED,
    EIGHT_EXPERT_FILES,
    ENCODER_IGNORED,
    INDEX_FILES,
    NON_LORA_LORA,
    ROUTER_LORA_DUPLICATE,
    ROUTER_LORA_IN_GATES,
    TOKENIZER_FILES,
    ConversionError,
    Drop,
    IgnoredFile,
    Variant,
    classify_folder,
    map_base_key,
    map_clip_key,
    map_expert_lora_key,
    map_experts_file_key,
    map_gates_key,
    map_whisper_key,
    parse_lora_key,
    strip_peft_prefix,
)
from .plan import ConversionPlan, TensorRef

ROUTER_LORA_MODES = ("official", "merge")


def require(condition: bool, message: str) -> None:
    """Raises `ConversionError(message)` unless `condition`."""
    if not condition:
        raise ConversionError(message)


@dataclass
class SourcePaths:
    """Where the inputs are. `tokenizer` defaults to `base` (the official loader reads it there)."""

    base: Path
    delta: Path
    clip: Path
    whisper: Path | None = None
    beats: Path | None = None
    experts: Path | None = None
    tokenizer: Path | None = None

    def __post_init__(self):
        for name in ("base", "delta", "clip", "whisper", "beats", "experts", "tokenizer"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        self.tokenizer = self.tokenizer or self.base

    def check(self, variant: Variant) -> None:
        needed = {"base", "delta", "clip", "whisper" if variant.sound == "speech" else "beats"}
        needed |= {"experts"} if variant.eight_experts else set()
        unused = {"whisper", "beats", "experts"} - needed
        missing = sorted(name for name in needed if getattr(self, name) is None)
        if missing:
            raise ConversionError(f"The {variant.name!r} variant needs --{' --'.join(missing)}.")
        extra = sorted(name for name in unused if getattr(self, name) is not None)
        if extra:
            raise ConversionError(f"The {variant.name!r} variant does not use --{' --'.join(extra)}.")
        for name in sorted(needed | {"tokenizer"}):
            path = getattr(self, name)
            if not (path.is_file() if name == "beats" else path.is_dir()):
                kind = "file" if name == "beats" else "folder"
                raise ConversionError(f"--{name} {path}: no such {kind}.")


# ------------------------------------------------------------------------------- inputs


def base_weight_files(folder: Path) -> list[Path]:
    """The base model's shards, from its index (or the single weights file)."""
    for index_name in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        index = read_json(folder / index_name)
        if index is not None:
            files = sorted(set(index["weight_map"].values()))
            missing = [name for name in files if not (folder / name).is_file()]
            require(not missing, f"{folder / index_name} lists shards that are missing: {missing}")
            return [folder / name for name in files]
    for name in ("pytorch_model.bin", "model.safetensors"):
        if (folder / name).is_file():
            return [folder / name]
    raise ConversionError(f"{folder} has no pytorch_model.bin(.index.json) or model.safetensors(.index.json).")


def encoder_weight_file(folder: Path) -> list[Path]:
    """The public encoder folder's weights: safetensors if present, else the PyTorch pickle."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    try:
        return base_weight_files(folder)
    except ConversionError:
        raise ConversionError(f"{folder} has no model.safetensors or pytorch_model.bin.") from None


class OfficialCheckpoint:
    """Replays the official load order of one variant into a `ConversionPlan`."""

    def __init__(self, variant: Variant, paths: SourcePaths, *, router_lora: str = "official"):
        require(
            router_lora in ROUTER_LORA_MODES, f"router_lora must be one of {ROUTER_LORA_MODES}, got {router_lora!r}."
        )
        self.variant = variant
        self.paths = paths
        self.router_lora = router_lora
        self.plan = ConversionPlan()
        self.ignored: list[IgnoredFile] = []
        self.official_config = read_json(paths.delta / "config.json")
        require(self.official_config is not None, f"{paths.delta} has no config.json.")
        self.adapter_config = read_json(paths.delta / "adapter_config.json")
        require(self.adapter_config is not None, f"{paths.delta} has no adapter_config.json (PEFT LoRA).")
        self.beats_cfg = None

    def _file(self, path: Path, **kwargs) -> TensorFile:
        root = path.parent.name
        return TensorFile(path, label=f"{root}/{path.name}", **kwargs)

    def _delta_file(self, name: str, *, required: bool = True) -> TensorFile | None:
        path = self.paths.delta / name
        if not path.is_file():
            require(not required, f"{self.paths.delta} has no {name}.")
            return None
        return self._file(path)

    def collect(self) -> ConversionPlan:
        """Lists every input file and builds the plan, in the official load order."""
        self._inventory()
        if self.variant.sound == "speech":
            self._whisper()  # the aligner's decoder starts as Whisper's (replaced below)
        self._base()
        if self.variant.eight_experts:
            self._experts()
        self._non_lora_trainables()
        self._adapter()
        self._aligner()
        self._gates()
        self._clip()
        if self.variant.sound == "audio":
            self._beats()
        return self.plan

    # -------------------------------------------------------------- files

    def _inventory(self) -> None:
        paths, variant = self.paths, self.variant
        self.base_files = base_weight_files(paths.base)
        used = {p.name for p in self.base_files} | INDEX_FILES | {"generation_config.json"}
        used |= set(TOKENIZER_FILES) if paths.tokenizer == paths.base else set()
        self.ignored += classify_folder(paths.base, used, BASE_IGNORED)
        delta_used = {"config.json", "adapter_config.json", "adapter_model.bin", "adapter_model.safetensors"}
        delta_used |= {"non_lora_trainables.bin", "mm_audio_aligner.bin", "mlp_gates.bin"}
        delta_used |= set(TOKENIZER_FILES) if paths.tokenizer == paths.delta else set()
        if variant.eight_experts:
            delta_used |= {f"{k}_mlp_experts.bin" for k in range(len(EIGHT_EXPERT_FILES))}
            self.ignored += classify_folder(paths.experts, {f"{name}.bin" for name in EIGHT_EXPERT_FILES}, {})
        require(not (paths.delta / "fm_adapter.bin").exists(), "fm_adapter.bin (use_fm_block) is not supported.")
        self.ignored += classify_folder(paths.delta, delta_used, DELTA_IGNORED)
        self.clip_files = encoder_weight_file(paths.clip)
        clip_used = {p.name for p in self.clip_files} | INDEX_FILES | {"config.json", "preprocessor_config.json"}
        self.ignored += classify_folder(paths.clip, clip_used, ENCODER_IGNORED)
        if variant.sound == "speech":
            self.whisper_files = encoder_weight_file(paths.whisper)
            whisper_used = (
                {p.name for p in self.whisper_files} | INDEX_FILES | {"config.json", "preprocessor_config.json"}
            )
            self.ignored += classify_folder(paths.whisper, whisper_used, ENCODER_IGNORED)

    def _route_all(self, file: TensorFile, mapper) -> None:
        for ref in self.plan.add_file(file):
            self.plan.route(ref, mapper(ref.key))

    def _whisper(self) -> None:
        for path in self.whisper_files:
            self._route_all(self._file(path), map_whisper_key)

    def _base(self) -> None:
        layers_with_experts = set()
        for path in self.base_files:
            file = self._file(path)
            self._route_all(file, lambda key: map_base_key(key, self.variant))
            layers_with_experts |= {int(k.split(".")[2]) for k in file.metadata() if ".mlp.experts." in k}
        if not self.variant.eight_experts:
            self._check_moe_layout(layers_with_experts)

    def _check_moe_layout(self, found: set[int]) -> None:
        num_layers = self.official_config["num_hidden_layers"]
        step = 1 if self.variant.moe_layers == "all" else 2
        expected = set(range(0, num_layers, step))
        require(
            found == expected,
            f"The base checkpoint has MoE experts in layers {sorted(found)}, but the {self.variant.name!r} variant "
            f"has them in {self.variant.moe_layers} layers {sorted(expected)}: is this the right --variant / --base?",
        )

    def _experts(self) -> None:
        """8-expert model: expert k = dense MLP from its Experts file + its own LoRA (merged)."""
        scale = self.official_config["lora_alpha"] / self.official_config["lora_r"]
        files = {name: self._file(self.paths.experts / f"{name}.bin") for name in dict.fromkeys(EIGHT_EXPERT_FILES)}
        for expert, name in enumerate(EIGHT_EXPERT_FILES):
            for ref in self.plan.add_file(files[name]):
                self.plan.route(ref, map_experts_file_key(ref.key, expert))
        for expert in range(len(EIGHT_EXPERT_FILES)):
            file = self._delta_file(f"{expert}_mlp_experts.bin")
            self._add_lora_pairs(file, lambda key, e=expert: map_expert_lora_key(key, e), scale)

    def _add_lora_pairs(self, file: TensorFile, mapper, scale: float, *, keep_deltas_for: str | None = None) -> None:
        """Routes a file whose keys map to `(target, "A" | "B")` (LoRA halves), `Drop` or `None`."""
        self.plan.add_file(file)
        pairs: dict[str, dict[str, TensorRef]] = {}
        for key, original in strip_peft_prefix(list(file.metadata())).items():
            ref = TensorRef(file, original)
            mapped = mapper(key)
            if isinstance(mapped, tuple):
                pairs.setdefault(mapped[0], {})[mapped[1]] = ref
            else:
                self.plan.route(ref, mapped)
        for target, halves in pairs.items():
            if set(halves) != {"A", "B"}:
                self.plan.errors.append(f"{file.label}: LoRA of {target} has only lora_{''.join(halves)}")
                for ref in halves.values():
                    self.plan.status[ref] = "incomplete LoRA pair"
                continue
            self.plan.add_lora(target, halves["A"], halves["B"], scale)

    def _non_lora_trainables(self) -> None:
        file = self._delta_file("non_lora_trainables.bin")
        self.plan.add_file(file)
        for key, original in strip_peft_prefix(list(file.metadata())).items():
            mapped = Drop(NON_LORA_LORA) if ".lora_" in key else map_base_key(key, self.variant)
            self.plan.route(TensorRef(file, original), mapped)

    def _adapter(self) -> None:
        config = self.adapter_config
        for option in ("rank_pattern", "alpha_pattern"):
            require(not config.get(option), f"adapter_config.json: {option} is not supported.")
        require(
            not config.get("use_rslora") and not config.get("fan_in_fan_out"),
            "adapter_config.json: use_rslora / fan_in_fan_out are not supported.",
        )
        file = self._delta_file("adapter_model.safetensors", required=False) or self._delta_file("adapter_model.bin")

        def mapper(key: str):
            parsed = parse_lora_key(key)
            if parsed is None:
                return None
            target = map_base_key(parsed[0] + ".weight", self.variant)
            return (target, parsed[1]) if isinstance(target, str) else None

        self._add_lora_pairs(file, mapper, config["lora_alpha"] / config["r"])

    def _aligner(self) -> None:
        file = self._delta_file("mm_audio_aligner.bin")
        self.plan.add_file(file)
        for key, original in strip_peft_prefix(list(file.metadata())).items():
            self.plan.route(TensorRef(file, original), map_base_key(key, self.variant))

    def _gates(self) -> None:
        file = self._delta_file("mlp_gates.bin", required=False)
        if file is None:
            return
        self.plan.add_file(file)
        merge = self.router_lora == "merge"
        for key, original in strip_peft_prefix(list(file.metadata())).items():
            ref, mapped = TensorRef(file, original), map_gates_key(key, self.variant)
            if isinstance(mapped, tuple):  # router LoRA halves saved beside the router
                self.plan.drop(ref, ROUTER_LORA_DUPLICATE if merge else ROUTER_LORA_IN_GATES)
            elif isinstance(mapped, str):
                self.plan.assign(mapped, ref, keep_deltas=merge)
            else:
                self.plan.route(ref, None)

    def _clip(self) -> None:
        for path in self.clip_files:
            self._route_all(self._file(path), map_clip_key)

    def _beats(self) -> None:
        file = TensorFile(self.paths.beats, label=self.paths.beats.name, entry="model")
        checkpoint = load_pickle(self.paths.beats)
        require(
            isinstance(checkpoint, dict) and {"cfg", "model"} <= checkpoint.keys(),
            f"{self.paths.beats} is not an official BEATs checkpoint ({{'cfg', 'model'}}).",
        )
        self.beats_cfg = dict(checkpoint["cfg"])
        kept = convert_official_beats_state_dict(checkpoint["model"], BeatsConfig.from_official_cfg(self.beats_cfg))
        del checkpoint
        for ref in self.plan.add_file(file):
            self.plan.route(ref, "model.audio_tower." + ref.key if ref.key in kept else Drop(BEATS_SHARED_COPY))
