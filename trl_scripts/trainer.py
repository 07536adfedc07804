"""`UniMoeTrainer`: `transformers.Trainer` with the MoE load-balancing loss, modality-grouped
sampling and a report of the samples the collator skipped.

Why not TRL's `SFTTrainer`: it has no audio, speech or video data path (we pass our own
collator and skip its dataset preparation, see `hf_conventions.md` §7), and its fused LM head
computes Mixtral's load-balancing loss (layers averaged, top-k counted), not the official one
(summed over layers, `moe.load_balancing_loss`), which our model computes. What is left to
override is only the loss, the sampler and the logs.

Loss under gradient accumulation (GA), per micro-batch:

    lm  = Σ token CE / (target tokens of the whole accumulated batch, all processes) × processes
    aux = router_aux_loss_coef × load_balancing_loss(this micro-batch) / GA

The CE is normalised over the accumulated batch (`num_items_in_batch`), so the Trainer does not
divide by GA; the aux loss is a per-micro-batch mean and must be (TRL does the same). DDP
averages gradients over processes, hence × processes on the CE only. `lm_loss` and `aux_loss`
(unweighted) are logged beside `loss`.
"""

from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.utils import logging

from .collator import SKIP_REASONS
from .lora import adapter_keys_as_saved
from .sampler import ModalityLengthGroupedSampler

logger = logging.get_logger(__name__)


@dataclass
class UniMoeTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the Uni-MoE recipe's own settings (official names where they exist)."""

    model_max_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest sequence with media expanded; longer samples are skipped, never truncated. "
            "Defaults to the model's max_position_embeddings (official: 2048)."
        },
    )
    group_by_modality_length: bool = field(
        default=False,
        metadata={"help": "Batches of one modality combination, grouped by length (official flag)."},
    )
    router_aux_loss_coef: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the load-balancing loss (MoE models); 0 turns it off as in the released "
            "4-expert recipe, the 8-expert recipe uses 0.01."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator reads the raw sample columns."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=True,
        metadata={"help": "True by default: a batch without some modality leaves its connector unused."},
    )


class UniMoeTrainer(Trainer):
    """Trainer for the three stages; see the module docstring for the loss."""

    args: UniMoeTrainingArguments

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        coef = getattr(self.args, "router_aux_loss_coef", 0.0)
        text_config = self.model.config.get_text_config()
        if coef and not text_config.moe_layer_indices:
            raise ValueError(f"router_aux_loss_coef={coef} needs a MoE model; this one has no MoE layer.")
        self.aux_loss_coef = coef
        # Sums since the last log; "steps" counts optimizer steps (1/GA per micro-batch), so a
        # resumed run divides by the steps it took, not by its global step.
        self._logged = {"lm_loss": torch.zeros(()), "aux_loss": torch.zeros(()), "steps": torch.zeros(())}
        self.skipped = torch.zeros(len(SKIP_REASONS), dtype=torch.long)

    # ------------------------------------------------------------------------------- loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)  # the caller (e.g. `prediction_step`) keeps its labels
        skipped = inputs.pop("skipped", None)
        if skipped is not None and model.training:
            self.skipped = self.skipped.to(skipped.device) + skipped
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False, output_router_logits=bool(self.aux_loss_coef))

        vocab_size = self.model.config.get_text_config().vocab_size
        num_items = None if num_items_in_batch is None else torch.as_tensor(num_items_in_batch).clamp(min=1)
        lm_loss = ForCausalLMLoss(outputs.logits, labels, vocab_size, num_items_in_batch=num_items)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            lm_loss = lm_loss * (self.accelerator.num_processes // self.get_tp_size())
        loss = lm_loss

        # Without `num_items_in_batch`, `training_step` divides the whole loss by GA itself.
        ga = getattr(self, "current_gradient_accumulation_steps", 1) if model.training else 1
        steps = ga if num_items_in_batch is not None else 1
        aux_loss = outputs.aux_loss if self.aux_loss_coef else None
        if aux_loss is not None:
            loss = loss + self.aux_loss_coef * aux_loss.to(loss.device) / steps

        if model.training and not loss.requires_grad:
            # No trained parameter took part (stage 1 on a text-only or all-skipped batch): a zero
            # step keeps backward (and DDP) working.
            anchor = next(p for p in model.parameters() if p.requires_grad)
            loss = loss + 0.0 * anchor.sum()
        if model.training:
            per_step = 1 if num_items_in_batch is not None else ga  # what one micro-batch adds to a step
            self._accumulate("lm_loss", lm_loss.detach().float() / per_step)
            if aux_loss is not None:
                self._accumulate("aux_loss", aux_loss.detach().float() / ga)
            self._accumulate("steps", torch.tensor(1.0 / ga))
        return (loss, outputs) if return_outputs else loss

    def _accumulate(self, key: str, value: torch.Tensor) -> None:
        # Stays on the loss's device: no host sync per micro-batch.
        self._logged[key] = self._logged[key].to(value.device) + value

    # ---------------------------------------------------------------------- loading adapters

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # PEFT would drop the expert LoRA weights of a per-expert model (see `lora.py`).
        with adapter_keys_as_saved(self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        with adapter_keys_as_saved(self.model):
            super()._load_best_model()

    # ---------------------------------------------------------------------------- sampling

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        missing = {"modality", "length"} - set(getattr(dataset, "column_names", []))
        if missing:
            raise ValueError(f"group_by_modality_length needs the dataset columns {sorted(missing)} (build_dataset).")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        group_size = self.args.train_batch_size * self.args.world_size
        return ModalityLengthGroupedSampler(dataset["modality"], dataset["length"], group_size, seed=seed)

    # ----------------------------------------------------------------------------- logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.model.training:
            logged = {key: value.to(self.args.device) for key, value in self._logged.items()}
            parts = torch.stack([logged["lm_loss"], logged["aux_loss"]]) / logged["steps"].clamp(min=1e-9)
            parts = self.accelerator.reduce(parts, reduction="mean")
            logs["lm_loss"] = round(parts[0].item(), 6)
            if self.aux_loss_coef:
                logs["aux_loss"] = round(parts[1].item(), 6)
            for key in self._logged:
                self._logged[key].zero_()
            skipped = self.accelerator.reduce(self.skipped.to(self.args.device), reduction="sum").tolist()
            logs.update({f"skipped_{reason}": count for reason, count in zip(SKIP_REASONS, skipped)})
        super().log(logs, start_time)

    def skip_summary(self) -> str:
        """The samples the collator skipped during training (this process)."""
        counts = dict(zip(SKIP_REASONS, self.skipped.tolist()))
        if not any(counts.values()):
            return "no sample skipped during training"
        return "samples skipped during training: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)


__all__ = ["UniMoeTrainer", "UniMoeTrainingArguments"]
