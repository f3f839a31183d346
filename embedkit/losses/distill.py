"""Fine-tuning without forgetting: replayed rows of an earlier task held to a frozen teacher, as a term any
composing method can add (``data.replay`` + ``objective.terms: [{name: distill, ...}]``; docs/continual.md).

COCONUT (continual contrastive learning, 2023) keeps earlier knowledge with experience replay, a contrastive loss
on the rehearsal samples and teacher–student distillation. Here the rehearsal rows come from ``data.replay`` (a
seeded stream of the earlier task's rows, a set number each step: :class:`ReplayRows`) and the term holds the
student's embeddings of their texts to the teacher's (:class:`DistillTerm`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import TrainerCallback

from embedkit import distributed
from embedkit.losses.common import cosine_matrix, frozen_model, gather_no_grad, teacher_embedding

COCONUT_CITATION = """@inproceedings{cappellazzo2024continual,
  title = {Continual Contrastive Spoken Language Understanding},
  author = {Cappellazzo, Umberto and Fini, Enrico and Yang, Muqiao and Falavigna, Daniele and Brutti, Alessio
            and Raj, Bhiksha},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  pages = {3727--3741},
  year = {2024},
  note = {COCONUT; arXiv:2310.02699 (2023)}
}"""


@dataclass
class ReplayRows:
    """The replayed rows (``data.replay``) as a seeded stream: step ``t`` of the run draws stream positions
    ``[t·k, (t+1)·k)``, process ``r`` of ``world`` the ``r``-th of ``world`` equal parts of them; position ``p``
    is row ``perm_e[p mod N]`` of a permutation ``perm_e`` drawn from ``(seed, e)``, ``e = p // N`` (a fresh
    shuffle each pass over the N rows). A pure function of the seed and the step: a resumed run draws the rows
    the uninterrupted run drew, and two processes draw the two halves of one process's rows.

    Args:
        columns: the replayed texts, one list per column (all of one length N).
        rows_per_step: k, the global number of replayed rows a step (every process together).
        seed: the order's seed.
        world_size / rank: this process's share of each step's rows.
        source: what the rows are (the file), for the card and the logs.
    """

    columns: list[list[str]]
    rows_per_step: int
    seed: int
    world_size: int = 1
    rank: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        if self.rows_per_step < 1 or self.rows_per_step % self.world_size:
            raise ValueError(f"data.replay: {self.rows_per_step} replayed rows a step do not split evenly over "
                             f"{self.world_size} processes")
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.columns[0])

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self))}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        """This process's rows of step ``step`` (indices into the columns)."""
        mine = distributed.local_rows(self.rows_per_step // self.world_size, self.rank)
        start, n = step * self.rows_per_step, len(self)
        return [int(self._perm(p // n)[p % n]) for p in range(start + mine.start, start + mine.stop)]

    def texts(self, step: int) -> list[list[str]]:
        """This process's replayed texts of step ``step``, one list per column."""
        rows = self.indices(step)
        return [[col[i] for i in rows] for col in self.columns]


def distill_cosine(student: Tensor, teacher: Tensor) -> Tensor:
    """L = (1/m) Σ_i (1 − cos(s_i, t_i))."""
    return (1 - F.cosine_similarity(student, teacher.to(student.dtype), dim=-1)).mean()


def distill_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """L = (1/(m·d)) Σ_i ‖s_i − t_i‖² (sentence-transformers' ``MSELoss``: the mean over every element)."""
    return F.mse_loss(student, teacher.to(student.dtype))


def distill_kl(student: Tensor, teacher: Tensor, student_all: Tensor, teacher_all: Tensor, offset: int,
               temperature: float) -> Tensor:
    """Relational distillation: each text's distribution over the step's other replayed texts.

    With ``S_ij = cos(s_i, s_j)``, ``T_ij = cos(t_i, t_j)`` over the m local rows i and the M (gathered) texts
    j ≠ i (row i's own column is ``offset + i``, left out):

        P_i = softmax_{j≠i}(T_ij / τ),   Q_i = softmax_{j≠i}(S_ij / τ),   L = (1/m) Σ_i KL(P_i ‖ Q_i)
    """
    m, big = student.shape[0], student_all.shape[0]
    keep = torch.ones(m, big, dtype=torch.bool, device=student.device)
    rows = torch.arange(m, device=student.device)
    keep[rows, offset + rows] = False
    s = (cosine_matrix(student, student_all) / temperature)[keep].view(m, big - 1)
    t = (cosine_matrix(teacher, teacher_all) / temperature)[keep].view(m, big - 1)
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    log_q = F.log_softmax(s, dim=1)
    log_p = F.log_softmax(t.to(s.dtype), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


class DistillTerm(nn.Module):
    """Distillation of replayed rows to a frozen teacher (COCONUT's teacher–student term; Cappellazzo et al.,
    "Continual Contrastive Spoken Language Understanding", 2023, arXiv:2310.02699), on the texts of the rows that
    ``data.replay`` draws into every step.

    Each step, the k replayed rows' texts (every column: an STS-B pair gives two) are embedded by the trained
    encoder **in the same pass as the method's views** (so GradCache, dropout and the gradient treat them like the
    batch) giving ``s_i``, and by the teacher ``T`` (the **starting model, frozen**, by default: a copy taken
    before training, eval mode, no gradient, never saved; or a named model) giving ``t_i = T(text_i)``:

        cosine (default):  L = (1/m) Σ_i (1 − cos(s_i, t_i))
        mse:               L = (1/(m·d)) Σ_i ‖s_i − t_i‖²
        kl:                L = (1/m) Σ_i KL( softmax_{j≠i}(cos(t_i, t_j)/τ) ‖ softmax_{j≠i}(cos(s_i, s_j)/τ) )

    over the m texts of this process; ``kl`` matches each text's distribution over the step's other replayed texts
    (gathered from every process with ``gather_across_devices``), so the geometry is kept but the space may
    rotate; ``cosine`` and ``mse`` hold each embedding where the teacher has it (they need the teacher's width).
    The method's own loss never sees the replayed rows. Logged as ``loss_distill`` (already weighted).

    Args:
        teacher: the frozen teacher (a SentenceTransformer); it is copied, frozen and put in eval mode.
        weight: multiplies the term.
        mode: ``cosine``, ``mse`` or ``kl``.
        temperature: τ of ``kl``.
        same_tokenizer: the teacher reads the student's tokens (the starting model); else it tokenises the texts.

    Example::

        data:
          replay: {path: "{data_dir}/sts/stsbenchmark/sts-train.csv", columns: [sentence1, sentence2], share: 0.2}
        objective:
          terms: [{name: distill, weight: 1.0, mode: cosine, teacher: initial}]
    """

    name = "distill"

    def __init__(self, teacher: nn.Module, weight: float = 1.0, mode: str = "cosine", temperature: float = 0.05,
                 same_tokenizer: bool = True, teacher_name: str = "initial") -> None:
        super().__init__()
        frozen = copy.deepcopy(teacher) if same_tokenizer else teacher
        frozen.requires_grad_(False)
        frozen.eval()
        # Not a registered submodule: never in the state dict, the checkpoints or the optimizer (rebuilt from the
        # recipe on resume, as the starting model or the named one).
        object.__setattr__(self, "teacher", frozen)
        self.weight = weight
        self.mode = mode
        self.temperature = temperature
        self.same_tokenizer = same_tokenizer
        self.teacher_name = teacher_name
        self.replay: ReplayRows | None = None
        self.step = 0  # the optimizer step being taken (set by ReplayStep from the trainer's state)

    @classmethod
    def from_params(cls, params: Any, model: nn.Module) -> DistillTerm:
        from embedkit.losses.momentum import unwrap

        student = unwrap(model)
        if params.teacher == "initial":
            return cls(student, params.weight, params.mode, params.temperature)
        teacher = frozen_model(params.teacher, student)
        teacher.max_seq_length = student.max_seq_length
        if params.mode != "kl":
            tw, sw = teacher.get_embedding_dimension(), student.get_embedding_dimension()
            if tw != sw:
                raise ValueError(f"objective term distill: teacher {params.teacher} embeds in {tw} dimensions, the "
                                 f"model in {sw}; mode {params.mode} compares the embeddings: use mode kl")
        return cls(teacher, params.weight, params.mode, params.temperature, False, params.teacher)

    @property
    def citation(self) -> str:
        return COCONUT_CITATION

    def attach(self, replay: ReplayRows) -> None:
        self.replay = replay

    def callbacks(self) -> list[TrainerCallback]:
        return [ReplayStep(self)]

    def get_config_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "weight": self.weight, "mode": self.mode,
                               "teacher": self.teacher_name}
        if self.mode == "kl":
            out["temperature"] = self.temperature
        if self.replay is not None:
            out["replay"] = {"source": self.replay.source, "rows": len(self.replay),
                             "rows_per_step": self.replay.rows_per_step}
        return out

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        return teacher_embedding(self.teacher, features)

    @torch.no_grad()
    def prepare(self, batch: Any, loss: Any) -> None:
        """This step's replayed texts, tokenised for the student (``batch.extra["replay_columns"]``, embedded with
        the views by :class:`~embedkit.losses.objective.ComposedLoss`) and their teacher embeddings."""
        if self.replay is None:
            raise ValueError("objective term distill: no replayed rows (data.replay) were attached")
        from embedkit.losses.momentum import unwrap

        if loss is not None and not loss.model.training:
            return  # nothing is replayed outside training
        student = unwrap(loss.model) if loss is not None else None
        device = batch.columns[0]["input_ids"].device
        columns, teacher = [], []
        for texts in self.replay.texts(self.step):
            feats = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in student.tokenize(texts).items()}
            columns.append(feats)
            if not self.same_tokenizer:
                feats = {k: v.to(device) if isinstance(v, Tensor) else v
                         for k, v in self.teacher.tokenize(texts).items()}
            teacher.append(self.embed(feats))
        batch.extra["replay_columns"] = columns
        batch.extra["replay_teacher"] = torch.cat(teacher)

    def forward(self, views: list[Tensor], batch: Any, loss: Any = None) -> Tensor:
        replayed: Sequence[Tensor] = batch.extra.get("replay_views") or []
        if not replayed:  # outside training: no replayed rows, nothing to hold
            return views[0].sum() * 0
        student = torch.cat(list(replayed))
        teacher = batch.extra["replay_teacher"]
        if self.mode == "cosine":
            return distill_cosine(student, teacher)
        if self.mode == "mse":
            return distill_mse(student, teacher)
        gather = loss.gather_across_devices if loss is not None else False
        student_all = loss.gather(student) if loss is not None else student
        teacher_all = gather_no_grad(teacher, gather)
        offset = loss.own_rows(student.shape[0]).start if loss is not None else 0
        return distill_kl(student, teacher, student_all, teacher_all, offset, self.temperature)


class ReplayStep(TrainerCallback):
    """Tells the distill term which optimizer step is being taken (the trainer's ``global_step``, restored on
    resume), so each step draws its own replayed rows."""

    def __init__(self, term: DistillTerm) -> None:
        self.term = term

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.term.step = state.global_step
