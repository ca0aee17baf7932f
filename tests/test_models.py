"""Tests for the model zoo (bandistill.models)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils.checkpoint
from torch import nn

from bandistill.errors import UserError
from bandistill.models import (
    build_model,
    count_parameters,
    default_weight_decay,
    list_models,
    model_family,
    validate_model_name,
)

SMALL = ["densenet-bc-40-12", "wrn-16-2", "resnet-20"]


def meta_params(name: str, num_classes: int = 100) -> int:
    """Parameter count without allocating memory or running the initialisers for real."""
    with torch.device("meta"):
        return count_parameters(build_model(name, num_classes))


@pytest.mark.parametrize(
    ("name", "num_classes", "millions"),
    [
        ("densenet-bc-100-12", 100, 0.80),  # Huang et al. 2017, Table 2
        ("densenet-bc-250-24", 10, 15.3),  # the paper's count is the CIFAR-10 one
        ("densenet-bc-190-40", 10, 25.6),
        ("wrn-28-10", 100, 36.5),  # Zagoruyko & Komodakis 2016, Table 4
        ("wrn-28-10", 10, 36.5),
        ("wrn-40-4", 10, 8.9),
        ("resnet-20", 10, 0.27),  # He et al. 2016, Table 6 (option A shortcuts: a bit fewer)
        ("resnet-110", 10, 1.7),
    ],
)
def test_paper_parameter_counts(name: str, num_classes: int, millions: float) -> None:
    n = meta_params(name, num_classes)
    tolerance = 0.01 if not name.startswith("resnet") else 0.05
    assert math.isclose(n / 1e6, millions, rel_tol=tolerance), n


def test_exact_parameter_counts_cifar100() -> None:
    # Regression values for the architecture as built here (num_classes=100).
    expected = {
        "densenet-bc-100-12": 800_032,
        "densenet-bc-250-24": 15_480_556,
        "densenet-bc-112-33": 6_987_916,
        "densenet-bc-90-60": 15_189_100,
        "densenet-bc-80-80": 21_104_180,
        "densenet-bc-80-120": 47_277_820,
        "wrn-28-10": 36_536_884,
    }
    assert {name: meta_params(name) for name in expected} == expected


def test_every_listed_model_builds() -> None:
    names = list_models()
    assert len(names) == len(set(names))
    for name in names:
        assert validate_model_name(name) == name
        assert meta_params(name) > 0


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize(("in_channels", "size"), [(3, 32), (1, 8)])
def test_forward_shape(name: str, in_channels: int, size: int) -> None:
    model = build_model(name, num_classes=100, in_channels=in_channels)
    x = torch.randn(2, in_channels, size, size)
    for mode in (True, False):
        model.train(mode)
        assert model(x).shape == (2, 100)


@pytest.mark.parametrize("name", SMALL)
def test_stem_and_classifier(name: str) -> None:
    model = build_model(name, num_classes=7, in_channels=1)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.stem is first_conv and model.stem.in_channels == 1
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert model.classifier is last_linear


def test_kaiming_init() -> None:
    torch.manual_seed(0)
    conv = build_model("wrn-16-4", 10).features[-1].conv2  # 256 -> 256, 3x3
    fan_out = conv.out_channels * 9
    assert math.isclose(conv.weight.std().item(), math.sqrt(2 / fan_out), rel_tol=0.05)


def test_memory_efficient_densenet_matches_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    plain = build_model("densenet-bc-22-8", 10)
    efficient = build_model("densenet-bc-22-8", 10, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())

    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)

    x = torch.randn(4, 3, 16, 16)
    results = []
    for model in (plain, efficient):
        model.train()
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        out.square().mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        results.append((out, xi.grad, grads, model.state_dict()))
    assert len(calls) == 9  # 3 blocks x 3 bottlenecks, checkpointed only in the efficient model

    (out_a, xg_a, g_a, sd_a), (out_b, xg_b, g_b, sd_b) = results
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(xg_b, xg_a)
    torch.testing.assert_close(g_b, g_a)
    torch.testing.assert_close(sd_b, sd_a)  # BN running statistics updated exactly once

    # Evaluation and no-grad forward passes do not checkpoint.
    calls.clear()
    efficient.eval()
    torch.testing.assert_close(efficient(x), plain.eval()(x))
    with torch.no_grad():
        efficient.train()(x)
    assert calls == []


def test_wrn_dropout() -> None:
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10, dropout=0.5)
    x = torch.randn(2, 3, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    assert not any(isinstance(m, nn.Dropout) for m in build_model("wrn-16-2", 10).modules())


@pytest.mark.parametrize(
    ("name", "normalised", "family"),
    [
        ("DenseNet-BC-100-12", "densenet-bc-100-12", "densenet-bc"),
        (" WRN-28-10 ", "wrn-28-10", "wrn"),
        ("ResNet-56", "resnet-56", "resnet"),
    ],
)
def test_names_are_case_insensitive(name: str, normalised: str, family: str) -> None:
    assert validate_model_name(name) == normalised
    assert model_family(name) == family


def test_build_case_insensitive() -> None:
    assert isinstance(build_model("ResNet-20", 10), nn.Module)


@pytest.mark.parametrize(
    ("name", "rule", "suggestion"),
    [
        ("densenet-bc-99-12", "6n+4", "densenet-bc-100-12"),
        ("densenet-bc-4-12", "6n+4", "densenet-bc-10-12"),
        ("densenet-bc-100-0", "growth rate", "densenet-bc-100-1"),
        ("wrn-27-10", "6n+4", "wrn-28-10"),
        ("resnet-18", "6n+2", "resnet-20"),
        ("densenet_bc_100_12", "densenet-bc-<depth>-<growth>", "densenet-bc-100-12"),
        ("wide-resnet-28-10", "wrn-<depth>-<width>", "wrn-28-10"),
        ("resnet56", "resnet-<depth>", "resnet-56"),
    ],
)
def test_invalid_names(name: str, rule: str, suggestion: str) -> None:
    calls = (validate_model_name, model_family, default_weight_decay, lambda n: build_model(n, 10))
    for call in calls:
        with pytest.raises(UserError) as info:
            call(name)
        message = str(info.value)
        assert "\n" not in message
        assert repr(name) in message and rule in message and suggestion in message


def test_unknown_name_without_close_match() -> None:
    with pytest.raises(UserError, match=r"unknown model 'qqq'.*e\.g\. densenet-bc-100-12"):
        validate_model_name("qqq")
    # a torchvision/timm builder typed without its library: the library names are suggested
    with pytest.raises(UserError, match=r"unknown model 'vgg16'.*did you mean torchvision/vgg16 or timm/vgg16"):
        validate_model_name("vgg16")
    with pytest.raises(UserError, match=r"\\n"):
        validate_model_name("resnet-20\nfoo")  # control characters are escaped: still one line


def test_options_that_do_not_apply() -> None:
    build_model("densenet-bc-40-12", 10, dropout=0.0)
    build_model("wrn-16-2", 10, memory_efficient=False)
    with pytest.raises(UserError, match="dropout"):
        build_model("densenet-bc-40-12", 10, dropout=0.2)
    with pytest.raises(UserError, match="dropout"):
        build_model("resnet-20", 10, dropout=0.2)
    with pytest.raises(UserError, match="memory_efficient"):
        build_model("wrn-16-2", 10, memory_efficient=True)
    with pytest.raises(UserError, match="dropout"):
        build_model("wrn-16-2", 10, dropout=1.0)
    with pytest.raises(UserError, match="num_classes"):
        build_model("resnet-20", 0)


def test_family_and_weight_decay() -> None:
    names = ("densenet-bc-100-12", "wrn-28-10", "resnet-110")
    assert [model_family(n) for n in names] == ["densenet-bc", "wrn", "resnet"]
    assert default_weight_decay("densenet-bc-100-12") == 1e-4
    assert default_weight_decay("resnet-20") == 1e-4
    assert default_weight_decay("WRN-28-10") == 5e-4


def test_count_parameters_trainable_only() -> None:
    model = build_model("resnet-20", 10)
    total = count_parameters(model)
    model.classifier.requires_grad_(False)
    assert count_parameters(model) == total - 64 * 10 - 10


@pytest.mark.parametrize("freeze_stem", [False, True])
def test_shared_buffer_densenet_is_the_same_network(monkeypatch: pytest.MonkeyPatch, freeze_stem: bool) -> None:
    """The dense block on one preallocated buffer (used on CUDA) vs concatenation: same keys, outputs,
    gradients and BN statistics (float64, so only the order of additions could differ)."""
    import bandistill.models.densenet as densenet

    torch.manual_seed(0)
    concat = build_model("densenet-bc-28-6", 10).double()
    shared = build_model("densenet-bc-28-6", 10).double()
    shared.load_state_dict(concat.state_dict())
    assert {k: v.shape for k, v in shared.state_dict().items()} == {k: v.shape for k, v in concat.state_dict().items()}
    if freeze_stem:  # the block's input then needs no gradient (transfer --ends); its parameters still do
        for model in (concat, shared):
            model.stem.weight.requires_grad_(False)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    real_prefix = densenet._prefix  # called once per layer on the shared buffer
    results = []
    for model, devices in ((concat, ()), (shared, ("cpu",))):
        monkeypatch.setattr(densenet, "SHARED_BUFFER_DEVICES", devices)
        applied = []
        monkeypatch.setattr(densenet, "_prefix", lambda *a, applied=applied: applied.append(1) or real_prefix(*a))
        model.train()
        out = model(x)
        out.square().mean().backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad},
                        model.state_dict(), len(applied)))
    (out_a, g_a, sd_a, n_a), (out_b, g_b, sd_b, n_b) = results
    assert (n_a, n_b) == (0, 12)  # 3 blocks x 4 layers, on the shared buffer only in the second model
    assert all(g is not None for g in g_b.values()) and g_b.keys() == g_a.keys()
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(g_b, g_a)
    torch.testing.assert_close(sd_b, sd_a)
    torch.testing.assert_close(shared.eval()(x), concat.eval()(x))
