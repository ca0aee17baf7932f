"""Student losses: Born-Again (Furlanello et al., ICML 2018) and Hinton et al. (2015).

Every loss takes ``(student_logits, labels, teacher_logits)`` with logits ``(B, C)`` and
returns a scalar. Divergences are KL(teacher || student) summed over classes and averaged
over the batch (``batchmean``); averaging over classes too (``KLDivLoss()``'s default)
divides the soft term by C and is a classic bug.

``temperature`` T softens both distributions in every soft term, which is then scaled by
T^2 so its gradients keep their size (Hinton et al. 2015, section 2). The BAN paper uses
T = 1 ("even without softening the logits"), the default. ``alpha`` weighs the soft term
of ``kd`` only.

=========  ===========================================================================
``ban+l``  CE(y, s) + T^2 KL(p_t || p_s): the paper's seed equation (default)
``ban``    T^2 KL(p_t || p_s): the teacher's distribution only (Table 2's "BAN")
``kd``     (1 - alpha) CE(y, s) + alpha T^2 KL(p_t || p_s) (Hinton et al. 2015)
``cwtm``   sum_i w_i CE(y_i, s_i), w_i = max_c p_t[i, c] / sum_j max_c p_t[j, c]
           (confidence-weighted by teacher max: the label loss only, reweighted)
``dkpp``   T^2 KL(phi(p_t) || p_s), phi permuting each sample's non-argmax
           probabilities among its non-argmax classes (dark knowledge with permuted
           predictions: the teacher's argmax and confidence survive, the dark knowledge
           about *which* wrong classes are likely does not). As in the paper's gradient
           for DKPP, there is no separate label term.
=========  ===========================================================================
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from bandistill.distributed import batch_rand, batch_sum
from bandistill.errors import UserError

LOSSES = ("ban+l", "ban", "kd", "cwtm", "dkpp")

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def kl_batchmean(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 log_q: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)), summed over classes, averaged over samples.

    ``log_q``: the student's log-probabilities at this temperature, when already computed.
    """
    if log_q is None:
        log_q = F.log_softmax(student_logits / temperature if temperature != 1.0 else student_logits, dim=1)
    t = teacher_logits.float()
    log_p = F.log_softmax(t / temperature if temperature != 1.0 else t, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def teacher_max_weights(teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CWTM's per-sample weights: the teacher's max probability, normalised to sum to 1 over the batch.

    Under torchrun the batch is the global one: the normaliser is summed over every rank
    (:func:`bandistill.distributed.batch_sum`), and divided by this rank's share so that the
    loss scaling of :func:`~bandistill.distributed.local_batch` and DDP's gradient average
    give exactly the single-process gradient.
    """
    conf = F.softmax(teacher_logits.float() / temperature, dim=1).amax(dim=1)
    total, share = batch_sum(conf.sum())
    return conf / (total * share)  # one process: share is 1.0, an exact no-op


def permute_non_argmax(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per sample, shuffle the entries of every class but the argmax among those classes.

    Each row gets its own permutation (never one across the batch); the argmax entry stays
    put. Permuting logits permutes the softmax probabilities the same way.
    """
    b, c = logits.shape
    top = logits.argmax(dim=1, keepdim=True)
    rank = torch.arange(c, device=logits.device, dtype=torch.float32).expand(b, c).clone()
    rank.scatter_(1, top, -1.0)
    src = rank.argsort(dim=1)  # argmax first, then the other classes in order
    # per sample of the global batch: under torchrun a sample gets its single-process permutation
    keys = batch_rand((b, c), device=logits.device, generator=generator).to(logits.device)
    keys.scatter_(1, top, -1.0)
    dst = keys.argsort(dim=1)  # argmax first, then the other classes shuffled
    out = torch.empty_like(logits)
    out.scatter_(1, dst, logits.gather(1, src))
    return out


#: The temperatures a loss accepts. Published settings lie in 1-20 (BAN: 1). Above 100 float32
#: cannot resolve the softened logits: the T^2-scaled soft term's gradient, against float64, is off
#: by 3e-6 at T=100, 3e-5 at 1e3, 3e-4 at 1e4 and is garbage (a negative KL) at 1e5; below 0.01 the
#: T^2-scaled soft term all but vanishes (it shrinks like T), so the student silently learns from labels.
TEMPERATURE_RANGE = (0.01, 100.0)


def check_loss_options(name: str, temperature: float = 1.0, alpha: float = 0.5) -> str:
    """The loss's key for ``name``; :class:`UserError` for an unknown loss, a temperature outside
    :data:`TEMPERATURE_RANGE`, an alpha outside [0, 1], or an alpha that the loss would ignore.

    The one place these rules live: ``train``, ``ban`` and :func:`make_loss` call it.
    """
    key = str(name).lower()
    if key not in LOSSES:
        raise UserError(f"unknown --loss '{name}': choose one of {', '.join(LOSSES)}")
    low, high = TEMPERATURE_RANGE
    if not low <= temperature <= high:
        raise UserError(f"--temperature must be between {low:g} and {high:g} (1-20 is usual; BAN uses 1), got "
                        f"{temperature}: above {high:g} float32 cannot resolve the softened logits, below {low:g} "
                        "the soft term vanishes")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha must be between 0 and 1, got {alpha}")
    if alpha != 0.5 and key != "kd":
        raise UserError(f"--alpha weighs the soft term of --loss kd only; --loss {key} would ignore it")
    return key


def make_loss(name: str, *, temperature: float = 1.0, alpha: float = 0.5,
              generator: torch.Generator | None = None) -> LossFn:
    """The loss called ``name`` (one of :data:`LOSSES`); :class:`UserError` on bad settings
    (:func:`check_loss_options`).

    ``generator`` drives dkpp's permutations (default: torch's global generator, which the
    training loop seeds per epoch, so runs are reproducible).
    """
    key = check_loss_options(name, temperature, alpha)
    t, t2 = float(temperature), float(temperature) ** 2

    def ban_l(s: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if t == 1.0:  # one log-softmax serves both terms
            log_q = F.log_softmax(s, dim=1)
            return F.nll_loss(log_q, y) + kl_batchmean(s, teacher, log_q=log_q)
        return F.cross_entropy(s, y) + t2 * kl_batchmean(s, teacher, t)

    def ban(s: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return t2 * kl_batchmean(s, teacher, t)

    def kd(s: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (1.0 - alpha) * F.cross_entropy(s, y) + alpha * t2 * kl_batchmean(s, teacher, t)

    def cwtm(s: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        w = teacher_max_weights(teacher, t)
        return (w * F.cross_entropy(s, y, reduction="none")).sum()

    def dkpp(s: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return t2 * kl_batchmean(s, permute_non_argmax(teacher.float(), generator), t)

    fn = {"ban+l": ban_l, "ban": ban, "kd": kd, "cwtm": cwtm, "dkpp": dkpp}[key]
    fn.__name__ = key
    return fn
