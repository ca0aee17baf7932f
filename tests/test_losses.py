"""Student losses against values worked out by hand (bandistill.losses).

The running example: student logits (0, 0) -> q = (1/2, 1/2); teacher logits (ln 3, 0) ->
p = (3/4, 1/4). Then
    KL(p || q) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812 per sample,
and with two such samples the batchmean KL is 0.130812 -- not 0.065406, which is what
averaging over the 2 x 2 elements (KLDivLoss()'s default) would give.
"""

from __future__ import annotations

import math

import pytest
import torch

from bandistill.errors import UserError
from bandistill.losses import LOSSES, kl_batchmean, make_loss, permute_non_argmax, teacher_max_weights

LN2 = 0.6931471805599453
KL_EXAMPLE = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.1308120...


def example(batch: int = 2):
    s = torch.zeros(batch, 2, requires_grad=True)
    t = torch.tensor([[math.log(3.0), 0.0]] * batch)
    y = torch.tensor([0, 1] * (batch // 2))
    return s, y, t


def test_kl_is_averaged_per_sample_not_per_class():
    s, _, t = example()
    kl = kl_batchmean(s, t)
    assert kl.item() == pytest.approx(0.130812036, abs=1e-6)
    assert kl.item() == pytest.approx(KL_EXAMPLE, abs=1e-6)
    # the classic bug would give half of that here (2 classes)
    p, log_q = torch.softmax(t, 1), torch.log_softmax(s, 1)
    elementwise = (p * (p.log() - log_q)).mean()
    assert elementwise.item() == pytest.approx(KL_EXAMPLE / 2, abs=1e-6)


def test_ban_plus_labels_is_cross_entropy_plus_kl():
    s, y, t = example()
    # CE of q = (1/2, 1/2) on either label: ln 2 = 0.693147; plus 0.130812
    assert make_loss("ban+l")(s, y, t).item() == pytest.approx(0.823959217, abs=1e-6)


def test_ban_is_the_teacher_term_only_and_its_gradient_is_q_minus_p_over_batch():
    s, y, t = example()
    loss = make_loss("ban")(s, y, t)
    assert loss.item() == pytest.approx(0.130812036, abs=1e-6)
    loss.backward()
    # d/ds of batchmean KL = (q - p) / B = ((0.5, 0.5) - (0.75, 0.25)) / 2
    assert torch.allclose(s.grad, torch.tensor([[-0.125, 0.125], [-0.125, 0.125]]), atol=1e-6)
    assert not t.requires_grad


def test_kd_is_hintons_weighted_sum_with_t_squared():
    s, y, t = example()
    # T = 2: p = softmax(ln3 / 2, 0) = (sqrt3, 1) / (1 + sqrt3) = (0.633975, 0.366025)
    # KL(p || (1/2, 1/2)) = 0.633975 ln 1.267949 + 0.366025 ln 0.732051 = 0.036341
    # kd = (1 - 0.5) * ln 2 + 0.5 * 2^2 * 0.036341 = 0.346574 + 0.072682 = 0.419255
    assert make_loss("kd", temperature=2.0, alpha=0.5)(s, y, t).item() == pytest.approx(0.419255156, abs=1e-6)
    # alpha = 0 is plain cross entropy, alpha = 1 is the soft term alone
    assert make_loss("kd", temperature=2.0, alpha=0.0)(s, y, t).item() == pytest.approx(LN2, abs=1e-6)
    assert make_loss("kd", temperature=2.0, alpha=1.0)(s, y, t).item() == pytest.approx(4 * 0.036340783, abs=1e-6)


def test_temperature_scales_ban_by_t_squared():
    s, y, t = example()
    assert make_loss("ban", temperature=2.0)(s, y, t).item() == pytest.approx(4 * 0.036340783, abs=1e-6)


def test_cwtm_weights_label_loss_by_teacher_max_normalised_over_batch():
    # teacher max probabilities 3/4 and 1/2 -> weights 0.6 and 0.4
    t = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    assert torch.allclose(teacher_max_weights(t), torch.tensor([0.6, 0.4]))
    # student q = (1/2, 1/2) and (3/4, 1/4), both labelled 0: CE = ln 2 and -ln(3/4) = 0.287682
    s = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    y = torch.tensor([0, 0])
    # 0.6 * 0.693147 + 0.4 * 0.287682 = 0.415888 + 0.115073 = 0.530961
    assert make_loss("cwtm")(s, y, t).item() == pytest.approx(0.530961137, abs=1e-6)


def test_dkpp_uses_the_teacher_with_non_argmax_probabilities_permuted():
    # teacher p = (0.6, 0.3, 0.1), student q = (0.25, 0.5, 0.25)
    t = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    s = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))
    y = torch.tensor([0])
    # unpermuted: 0.6 ln 2.4 + 0.3 ln 0.6 + 0.1 ln 0.4 = 0.525281 - 0.153248 - 0.091629 = 0.280404
    # swapped (0.6, 0.1, 0.3): 0.6 ln 2.4 + 0.1 ln 0.2 + 0.3 ln 1.2 = 0.525281 - 0.160944 + 0.054696 = 0.419034
    seen = set()
    for seed in range(20):
        loss = make_loss("dkpp", generator=torch.Generator().manual_seed(seed))(s, y, t).item()
        assert min(abs(loss - 0.280404482), abs(loss - 0.419033918)) < 1e-5
        seen.add(round(loss, 4))
    assert seen == {0.2804, 0.419}


def test_permutation_is_per_sample_across_classes_and_keeps_the_argmax():
    torch.manual_seed(0)
    t = torch.randn(64, 10)
    out = permute_non_argmax(t, torch.Generator().manual_seed(1))
    assert torch.equal(out.argmax(1), t.argmax(1))
    assert torch.equal(out.max(1).values, t.max(1).values)
    # every row keeps its own values (permuted within the row, never across the batch)
    assert torch.equal(out.sort(1).values, t.sort(1).values)
    # and the rows do not all share one permutation
    # where each of row i's entries went: argsort(out_i)[rank of the entry in t_i]
    where = torch.argsort(out, 1).gather(1, torch.argsort(torch.argsort(t, 1), 1))
    perms = {tuple(row.tolist()) for row in where}
    assert len(perms) > 1
    moved = (out != t).any(1).float().mean().item()
    assert moved > 0.9


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_is_a_finite_scalar_with_student_gradients(name):
    torch.manual_seed(0)
    s = torch.randn(8, 5, requires_grad=True)
    t = torch.randn(8, 5).half()  # caches store float16
    y = torch.randint(0, 5, (8,))
    loss = make_loss(name)(s, y, t)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="unknown --loss"):
        make_loss("mse")
    with pytest.raises(UserError, match="--temperature"):
        make_loss("kd", temperature=0.0)
    with pytest.raises(UserError, match="--alpha"):
        make_loss("kd", alpha=1.5)


def test_temperature_shapes_every_soft_loss():
    """--temperature with --loss ban is used (T^2 KL at temperature T), never silently ignored."""
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    for name in ("ban", "ban+l", "kd", "dkpp"):
        g1, g4 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        assert not torch.allclose(make_loss(name, temperature=1.0, generator=g1)(s, y, t),
                                  make_loss(name, temperature=4.0, generator=g4)(s, y, t)), name
