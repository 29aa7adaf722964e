"""The two meta-training losses, as pure tensor functions.

Axes: b example, r rank of the generated LoRA, s rank of the target LoRA, i in, o out.

SFT: ``example_losses`` is each example's mean completion cross-entropy; the batch loss is their
mean, so every example weighs the same whatever its completion length.

Contrastive (optional, SFT side): ``contrastive_losses`` asks each example's loss under its own
task's adapter to beat its loss under another task's adapter (``other_task_rows``) by a margin.
SFT alone is satisfied by one adapter that helps every task; this term is only satisfied when
the adapter depends on the condition, which is what `generated - generated_other_task`
measures. A hinge, so it stops pushing once own beats other by the margin (it never rewards
making another task's adapter ever worse).

Distillation (optional; ``distill_losses``): context distillation of the description. The teacher
is the frozen LM with the task's description in its prompt, the student the same LM with the
adapter generated from that description and no description; each example's loss is the mean
over its answer tokens of KL(teacher || student) on the next-token distribution. Unlike SFT and
reconstruction it has a target for any task, trained or not: what the description itself does in
the prompt. (Alone it collapses to one adapter for every description, as SFT alone does: README,
"The shipped checkpoint".)

Reconstruction: ``delta_w_loss`` compares the generated update ``dW = s B A`` with the library
LoRA's ``dW* = s* B* A*`` per module, as a relative squared Frobenius error summed over modules:

    L = sum_m ||dW_m - dW*_m||_F^2 / sum_m ||dW*_m||_F^2

Why delta W and not A/B: a LoRA is only defined up to ``B A = (B G)(G^-1 A)`` for any invertible
r x r ``G``, so two LoRAs with the same effect can have very different factors; regressing raw A
and B (Text-to-LoRA's reconstruction loss) asks the hypernetwork to also guess the target's
arbitrary gauge (set by its random init). The update ``dW`` is what the LM sees and is
gauge-invariant. Why relative: it is scale-free (L = 1 for a no-op adapter, whatever the
model's widths), so its weight against the SFT loss means the same on any base model.
It is computed without forming any (o, i) matrix, through r x r products (exact):

    ||B A||^2 = sum((B^T B) * (A A^T)),   <B A, B* A*> = sum((B^T B*) * (A A*^T))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum
from torch import Tensor

from hypergen.adapters.lora import LoraWeights
from hypergen.data.text_batches import IGNORE_INDEX, completion_logprobs


def example_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """(b,) mean cross-entropy over each example's completion tokens.

    A mean of these over equal per-process slices, averaged by DDP, equals the mean over the
    global batch: what makes 1-process and N-process runs agree.
    """
    total, count = completion_logprobs(logits, labels)
    return -total / count.clamp(min=1)


def distill_losses(
    student_logits: Tensor, student_labels: Tensor, teacher_logits: Tensor, teacher_labels: Tensor
) -> Tensor:
    """(b,) mean KL(teacher || student) over each example's answer tokens.

    The two batches hold the same answers after different prompts (the teacher's carries the
    description), so row i's labelled positions are the same tokens in both, in the same order.
    Where one side cut its answer shorter (a longer length limit on the other), the first answer
    tokens both sides hold are compared: their contexts agree up to there.
    """
    student_at = student_labels[:, 1:] != IGNORE_INDEX  # position t predicts token t+1
    teacher_at = teacher_labels[:, 1:] != IGNORE_INDEX
    counts = torch.minimum(student_at.sum(dim=1), teacher_at.sum(dim=1))
    student_at &= student_at.cumsum(dim=1) <= counts[:, None]
    teacher_at &= teacher_at.cumsum(dim=1) <= counts[:, None]
    student = F.log_softmax(student_logits[:, :-1][student_at].float(), dim=-1)
    teacher = F.log_softmax(teacher_logits[:, :-1][teacher_at].float(), dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(dim=-1)  # (tokens,) in row-major order
    rows = torch.arange(len(counts), device=kl.device).repeat_interleave(counts)
    per_row = kl.new_zeros(len(counts)).index_add_(0, rows, kl)
    return per_row / counts.clamp(min=1)


def other_task_rows(tasks: list[str]) -> list[int | None]:
    """For each row, the next row (cyclically) whose task differs; None when every row shares it.

    Deterministic and within the micro-batch, so each process pairs its own rows (DDP-safe).
    """
    n = len(tasks)
    return [
        next((j % n for j in range(i + 1, i + n) if tasks[j % n] != tasks[i]), None)
        for i in range(n)
    ]


def contrastive_losses(own: Tensor, other: Tensor, margin: float) -> Tensor:
    """(b,) hinge ``max(0, margin - (other - own))`` on per-example losses (nats)."""
    return torch.relu(margin - (other - own))


def _gram(A1: Tensor, B1: Tensor, A2: Tensor, B2: Tensor) -> Tensor:
    """(b,) Frobenius inner products <B1 A1, B2 A2> for batches of factors."""
    left = einsum(B1, B2, "b o r, b o s -> b r s")
    right = einsum(A1, A2, "b r i, b s i -> b r s")
    return (left * right).sum(dim=(1, 2))


def delta_w_loss(generated: LoraWeights, targets: LoraWeights) -> Tensor:
    """(b,) relative squared error of the generated updates against the target updates.

    Args:
        generated: b adapters (gradients flow through these).
        targets: b target adapters over the same modules (any rank; fixed).
    """
    if set(generated.module_names) != set(targets.module_names):
        raise ValueError("delta_w_loss: generated and target adapters cover different modules")
    s, t = generated.scaling, targets.scaling
    error = 0.0
    norm = 0.0
    for name in generated.module_names:
        A, B = generated.A[name], generated.B[name]
        At, Bt = targets.A[name].to(A.dtype), targets.B[name].to(B.dtype)
        target_sq = t * t * _gram(At, Bt, At, Bt)
        error = error + s * s * _gram(A, B, A, B) + target_sq - 2 * s * t * _gram(A, B, At, Bt)
        norm = norm + target_sq
    return error.clamp(min=0) / norm.clamp(min=torch.finfo(norm.dtype).tiny)
