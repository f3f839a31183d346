"""Text2Token-style token-target loss (An et al., "Text2Token: Unsupervised Text Representation Learning with
Token Target Prediction", 2025, arXiv:2510.10224). The paper's code is not public; this is our reading of it,
documented in docs/text2token.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit.log import log
from embedkit.losses.contrastive import info_nce
from embedkit.losses.objective import ComposedLoss, ViewBatch
from embedkit.methods.text2token.targets import DataTargets, ModelTargets
from embedkit.methods.text2token.vocab_head import HEAD_FILE, VocabHead, head_state_from_file, save_head


def token_kl(target: Tensor, log_q: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean over rows of KL(p ‖ q) = Σ_v p_v (log p_v − log q_v), with 0 · log 0 = 0.

    ``target`` holds the rows ``p`` (each a distribution, or all zeros for a row without a target), ``log_q``
    the predicted log-probabilities; rows where ``valid`` is false do not count. A batch without any valid
    row gives a zero that still depends on ``log_q`` (so the backward pass runs everywhere).
    """
    per_row = torch.special.xlogy(target, target).sum(-1) - (target * log_q).sum(-1)
    if valid is None:
        return per_row.mean()
    if not bool(valid.any()):
        return (log_q * 0.0).sum()
    return per_row[valid].mean()


class Text2TokenLoss(ComposedLoss):
    """Train a sentence embedding to predict a target distribution over the vocabulary.

    The pooled embedding ``e`` of a text goes through the vocabulary head ``g`` (the backbone's MLM/LM head,
    or a linear head tied to the input embeddings) and a softmax at temperature ``T``; the loss is

        L_KL = KL( p ‖ softmax(g(e)/T) )

    averaged over the texts that have a target. The target ``p`` depends on the stage: before
    ``stage2_step`` it is the data-driven target (IDF-weighted tokens of the text itself); from that step on
    it is ``(1 − λ) p_data + λ p_model`` with ``p_model`` the frozen starting model's top-k prediction
    (λ = ``mixture``; 1 → model-derived targets only). With ``infonce_weight`` w > 0 each text is encoded
    twice under dropout and SimCSE's InfoNCE term is added: ``L = L_KL + w · L_InfoNCE`` (the KL then
    averages over both views).

    The current step is the buffer ``step`` (so it is saved with the method state and restored on resume):
    :class:`StageCallback` sets it from the trainer's global step; without the callback it counts training
    forward passes.

    Args:
        model: the SentenceTransformer being trained.
        head: the vocabulary head (:func:`embedkit.methods.text2token.vocab_head.build_vocab_head`).
        data_targets: builds data-driven targets from token ids.
        model_targets: builds model-derived targets (needed when stage 2 is used).
        temperature: ``T``.
        stage2_step: first step of stage 2; ``None`` for data-driven targets throughout.
        mixture: λ, the weight of the model-derived target in stage 2.
        infonce_weight: ``w``; 0 disables the InfoNCE term.
        infonce_temperature: τ of the InfoNCE term.
        projection: optional training-only MLP for the InfoNCE views (SimCSE's ``mlp_only_train``).
        gather_across_devices: gather InfoNCE negatives from every process.
        mini_batch_size: GradCache mini-batch (None: one forward pass); the targets are computed outside it.

    Example::

        head = build_vocab_head(model)
        loss = Text2TokenLoss(model, head, DataTargets(table, freqs), temperature=1.0)
        # dataset: one column of text
    """

    def __init__(
        self, model: nn.Module, head: VocabHead, data_targets: DataTargets, model_targets: ModelTargets | None = None,
        temperature: float = 1.0, stage2_step: int | None = None, mixture: float = 1.0, infonce_weight: float = 0.0,
        infonce_temperature: float = 0.05, projection: nn.Module | None = None, gather_across_devices: bool = True,
        mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, None, gather_across_devices, mini_batch_size)
        if stage2_step is not None and model_targets is None and mixture > 0:
            raise ValueError("stage 2 with mixture > 0 needs model_targets")
        if not 0.0 <= mixture <= 1.0:
            raise ValueError("mixture must be in [0, 1]")
        self.head = head
        self.projection = projection
        object.__setattr__(self, "data_targets", data_targets)
        object.__setattr__(self, "model_targets", model_targets)
        self.temperature = temperature
        self.stage2_step = stage2_step
        self.mixture = mixture
        self.infonce_weight = infonce_weight
        self.infonce_temperature = infonce_temperature
        self.register_buffer("step", torch.zeros(1, dtype=torch.long))
        self.external_step = False
        self.last: dict[str, float] = {}

    config_keys = ("temperature", "stage2_step", "mixture", "infonce_weight", "infonce_temperature")

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "head": self.head.source}

    def stage(self) -> int:
        """1 (data-driven targets) or 2 (model-derived / mixture) at the current step."""
        return 2 if self.stage2_step is not None and int(self.step) >= self.stage2_step else 1

    @torch.no_grad()
    def targets(self, features: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(targets ``B × V``, valid ``B``) for the current stage."""
        ids = features["input_ids"]
        if self.stage() == 2 and self.mixture == 1.0:  # the data-driven targets would go unused
            return self.model_targets(features).to(ids.device), torch.ones(ids.shape[0], dtype=torch.bool,
                                                                            device=ids.device)
        data, valid = self.data_targets(ids, features.get("attention_mask"))
        if self.stage() == 1 or self.mixture == 0.0:
            return data, valid
        model = self.model_targets(features).to(data.device)
        mixed = (1 - self.mixture) * data + self.mixture * model
        # A text without a data-driven target keeps the model-derived one alone.
        mixed[~valid] = model[~valid]
        return mixed, torch.ones_like(valid)

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None = None) -> ViewBatch:
        text = features[0]
        target, valid = self.targets(text)
        views = 2 if self.infonce_weight > 0 else 1
        return ViewBatch([text] * views, labels, pair=(0, 1) if views == 2 else None, anchor_features=text,
                         positive_features=text, extra={"target": target, "valid": valid})

    def score(self, views: list[Tensor], batch: ViewBatch) -> Tensor:
        target, valid = batch.extra["target"], batch.extra["valid"]
        emb = torch.cat(views) if len(views) > 1 else views[0]
        n = len(views)
        logits = self.head(emb).float() / self.temperature
        log_q = F.log_softmax(logits, dim=-1)
        kl = token_kl(target.repeat(n, 1), log_q, valid.repeat(n))
        loss = kl
        self.last = {"kl": float(kl.detach()), "stage": float(self.stage()), "valid": float(valid.float().mean())}
        if n == 2:
            z = self.projection(emb) if self.projection is not None else emb
            z1, z2 = torch.chunk(z, 2, dim=0)
            contrastive = info_nce(z1, self.gather(z2), self.infonce_temperature, rows=self.own_rows(z1.shape[0]))
            loss = kl + self.infonce_weight * contrastive
            self.last["infonce"] = float(contrastive.detach())
        return loss

    def after(self, batch: ViewBatch) -> None:
        if not self.external_step:
            self.step += 1


def stage_callback(loss: Text2TokenLoss) -> Any:
    """A ``TrainerCallback`` that keeps ``loss.step`` equal to the trainer's global step, logs the KL and the
    stage switch, and at the end of training writes the head (of the best checkpoint when one was loaded)
    to ``text2token_head.safetensors`` beside the checkpoints folder."""

    from transformers import TrainerCallback

    class StageCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            loss.external_step = True

        def on_step_begin(self, args, state, control, **kwargs):
            loss.step.fill_(state.global_step)
            if state.global_step == loss.stage2_step:
                log(f"text2token: stage 2 (model-derived targets, λ={loss.mixture}) from step {state.global_step}")

        def on_step_end(self, args, state, control, **kwargs):
            loss.step.fill_(state.global_step)  # saved with a checkpoint taken after this step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and "loss" in logs and loss.last:
                extra = {f"t2t_{k}": v for k, v in loss.last.items()}  # of the last batch before the log
                logs.update(extra)
                if state.log_history and state.log_history[-1].get("step") == state.global_step:
                    state.log_history[-1].update(extra)

        def on_train_end(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            head = loss.head
            best = state.best_model_checkpoint
            if best:
                try:
                    state_dict, _ = head_state_from_file(best)
                    head.load_state_dict(state_dict, strict=True)
                except Exception:  # noqa: BLE001 - keep the last head when the checkpoint has none
                    pass
            target = Path(args.output_dir).parent / HEAD_FILE
            target.parent.mkdir(parents=True, exist_ok=True)
            save_head(head, target, temperature=loss.temperature)

    return StageCallback()
