"""View policies: pure, order-independent, and what they claim to be (pad, crop, flip)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bandistill.data.views import ViewPolicy, normalize


def reference_view(image: np.ndarray, dy: int, dx: int, flip: int, pad: int) -> np.ndarray:
    """The textbook per-image version: zero-pad, crop, flip."""
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), dtype=image.dtype)
    padded[:, pad : pad + h, pad : pad + w] = image
    out = padded[:, dy : dy + h, dx : dx + w]
    return out[:, :, ::-1] if flip else out


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (64, 3, 10, 12), dtype=torch.uint8, generator=g)


def test_same_key_same_params_and_pixels(images):
    policy = ViewPolicy(pad=4, flip=True)
    idx = np.arange(64)
    a = policy.params(7, 3, idx)
    b = policy.params(7, 3, idx)
    assert torch.equal(a, b)
    assert torch.equal(policy.apply(images, a), policy.apply(images.clone(), b))


def test_params_do_not_depend_on_batch_order_or_batching():
    policy = ViewPolicy(pad=4, flip=True)
    idx = np.arange(500)
    whole = policy.params(1, 2, idx)
    perm = np.random.default_rng(0).permutation(500)
    assert torch.equal(policy.params(1, 2, perm), whole[perm])
    pieces = torch.cat([policy.params(1, 2, idx[i : i + 7]) for i in range(0, 500, 7)])
    assert torch.equal(pieces, whole)


def test_different_views_and_seeds_differ():
    policy = ViewPolicy(pad=4, flip=True)
    idx = np.arange(1000)
    v0, v1, s1 = policy.params(0, 0, idx), policy.params(0, 1, idx), policy.params(1, 0, idx)
    assert (v0 != v1).any(dim=1).float().mean() > 0.9
    assert (v0 != s1).any(dim=1).float().mean() > 0.9


def test_params_cover_the_whole_range():
    policy = ViewPolicy(pad=4, flip=True)
    p = policy.params(0, 0, np.arange(5000)).long()
    assert set(p[:, 0].tolist()) == set(range(9)) and set(p[:, 1].tolist()) == set(range(9))
    assert set(p[:, 2].tolist()) == {0, 1}
    assert 0.45 < p[:, 2].float().mean() < 0.55
    assert (ViewPolicy(pad=1, flip=False).params(0, 0, np.arange(100))[:, 2] == 0).all()


def test_apply_matches_per_image_reference(images):
    policy = ViewPolicy(pad=3, flip=True)
    params = policy.params(5, 1, np.arange(64))
    out = policy.apply(images, params).numpy()
    for i in range(64):
        dy, dx, flip = (int(v) for v in params[i])
        assert np.array_equal(out[i], reference_view(images[i].numpy(), dy, dx, flip, 3)), i


def test_identity_params_return_the_clean_image(images):
    policy = ViewPolicy(pad=4, flip=True)
    assert torch.equal(policy.apply(images, policy.identity_params(64)), images)


def test_per_sample_views_in_one_batch(images):
    policy = ViewPolicy(pad=2, flip=True)
    views = np.arange(64) % 4
    mixed = policy.params(0, views, np.arange(64))
    for v in range(4):
        sel = views == v
        assert torch.equal(mixed[sel], policy.params(0, v, np.arange(64)[sel]))


class _ViewDataset(torch.utils.data.Dataset):
    def __init__(self, images, policy):
        self.images, self.policy = images, policy

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        params = self.policy.params(9, 2, np.array([i]))
        return self.policy.apply(self.images[i : i + 1], params)[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_workers_change_nothing(images, workers):
    policy = ViewPolicy(pad=4, flip=True)
    expected = policy.apply(images, policy.params(9, 2, np.arange(64)))
    loader = torch.utils.data.DataLoader(_ViewDataset(images, policy), batch_size=5, num_workers=workers)
    assert torch.equal(torch.cat(list(loader)), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_pixels_on_gpu(images):
    policy = ViewPolicy(pad=4, flip=True)
    params = policy.params(0, 0, np.arange(64))
    assert torch.equal(policy.apply(images.cuda(), params.cuda()).cpu(), policy.apply(images, params))


def test_policy_json_round_trip():
    policy = ViewPolicy(pad=2, flip=False)
    assert ViewPolicy.from_json(policy.to_json()) == policy
    assert policy.to_json() != ViewPolicy(pad=2, flip=True).to_json()


def test_normalize():
    x = torch.full((1, 2, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x, torch.tensor([0.5, 1.0]), torch.tensor([0.25, 0.5]))
    assert torch.allclose(out[0, 0], torch.full((2, 2), 2.0)) and torch.allclose(out[0, 1], torch.zeros(2, 2))
