"""``verify-cache``: replay random (sample, view) pairs through the live teacher and compare.

It checks what a student relies on: that the stored parameters rebuild the images the
teacher saw (they must also equal the view policy's pure function of (seed, view,
sample)), and that the stored logits are that teacher's logits on them, up to the storage
dtype's rounding. A wrong image moves logits by far more than that.

Tolerance, per element: ``|live - cached| <= atol + rtol * |cached|``. float16 rounding
is at most half a unit in the last place (2^-11 relative); float32 storage is exact up to
the run-to-run noise of batched kernels. bf16 autocast (CUDA) at dump or verify time adds
its own ~2^-8 relative error per op, so that case gets a looser bound.

A top-k cache (format 2, ``--top-k k``) is checked on what it stores: the k values against
the live logits of the stored classes, the log-sum-exp against the live row's, and the
classes against the live top k (a stored class may only trail the live k-th largest
logit by the tolerance, so ties do not fail). The error top-k itself introduces is not a
failure but a figure the report states: KL(live || reconstruction) and the total
variation between the live softmax and the reconstruction (top-k probabilities exact, the
rest spread evenly; :func:`bandistill.soft_targets.topk_log_probs`), and the probability
mass outside the top k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bandistill.cache.reader import check_values, open_cache
from bandistill.checkpoint import load_checkpoint, normalization
from bandistill.device import resolve_device
from bandistill.dump import load_teacher, teacher_dataset
from bandistill.errors import UserError
from bandistill.identity import checkpoint_identity, file_digest
from bandistill.inference import predict_logits

#: (atol, rtol) per storage dtype, on one device in float32.
TOLERANCES = {"float16": (2e-3, 2.0**-10), "float32": (1e-4, 1e-4)}
#: (atol, rtol) when bf16 autocast ran at dump or verify time.
BF16_TOLERANCE = (5e-2, 2.0**-5)


def tolerance_for(dtype: str, bf16: bool) -> tuple[float, float]:
    atol, rtol = TOLERANCES.get(dtype, TOLERANCES["float16"])
    if bf16:
        atol, rtol = max(atol, BF16_TOLERANCE[0]), max(rtol, BF16_TOLERANCE[1])
    return atol, rtol


def verify_cache(
    checkpoint: str | Path,
    cache_path: str | Path,
    *,
    samples: int = 64,
    data_dir: str | None = None,
    device: str = "auto",
    seed: int = 0,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Compare ``samples`` random cached (sample, view) pairs, and as many test samples, with the live teacher.

    Returns a report (``passed``, ``max_abs_diff``, ``test_max_abs_diff``, ...); it does
    not raise when the check fails -- the caller decides (the CLI exits 1). Raises
    :class:`UserError` when the checkpoint is not the cache's teacher or the data differ.
    ``tolerance`` replaces the per-element bound by one absolute bound.
    """
    if samples < 1:
        raise UserError(f"--samples must be a positive integer, got {samples}")
    if tolerance is not None and not tolerance > 0:
        raise UserError(f"--tolerance must be positive, got {tolerance}; leave it out for the cache dtype's bound")
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    digest = checkpoint_identity(ckpt)
    with open_cache(cache_path) as cache:
        info = cache.info
        # caches dumped before content identity record the checkpoint file's bytes digest
        if info.teacher_digest not in (digest, file_digest(checkpoint)):
            raise UserError(f"{checkpoint} (digest {digest}) is not the teacher of {cache_path} "
                            f"(made from {info.teacher.get('checkpoint')}, digest {info.teacher_digest}); "
                            "pass that checkpoint")
        ds = teacher_dataset(ckpt, info.dataset, data_dir)
        cache.check_fits(dataset=ds.name, fingerprint=ds.fingerprint, num_classes=ds.num_classes,
                         num_samples=ds.num_train, view_policy=ds.view_policy.to_json(), what="the teacher")
        try:
            check_values(cache)
        except UserError as exc:  # a damaged cache is a failed check (exit 1), not a usage error
            return {"cache": str(cache_path), "checkpoint": str(checkpoint), "passed": False, "damaged": str(exc),
                    "dtype": info.dtype, "device": str(dev)}
        k, n = info.num_views, info.num_samples
        rng = np.random.default_rng(seed)
        flat = np.sort(rng.choice(k * n, size=min(samples, k * n), replace=False))
        views, idx = flat // n, flat % n
        records = None
        params = np.empty((len(flat), ds.view_policy.num_params), dtype=np.int16)
        params_match = True
        policy, plan = ds.view_policy, info.view_plan
        for v in np.unique(views):  # one sequential read per view, then index in memory
            sel = views == v
            rows = cache.read_stored_view(int(v))
            if records is None:
                records = np.empty((len(flat), *rows.shape[1:]), dtype=rows.dtype)
            records[sel] = rows[idx[sel]]
            stored = cache.read_view_params(int(v))
            params[sel] = stored[idx[sel]]
            params_match &= bool(np.array_equal(stored, plan.params(policy, int(v), np.arange(n)).numpy()))
        test_logits, test_labels = cache.read_test()
    n_test = min(samples, len(test_labels))
    test_idx = np.sort(rng.choice(len(test_labels), size=n_test, replace=False))

    model = load_teacher(ckpt, dev)
    mean, std = normalization(ckpt)
    live = predict_logits(model, ds.train_images[torch.from_numpy(idx)], mean, std, policy=policy,
                          params=torch.from_numpy(params), device=dev, batch_size=256).numpy()
    live_test = predict_logits(model, ds.test_images[torch.from_numpy(test_idx)], mean, std, device=dev,
                               batch_size=256).numpy()

    bf16 = dev.type == "cuda" or info.attrs.get("autocast", "none") != "none"
    atol, rtol = tolerance_for(info.dtype, bf16)
    if tolerance is not None:
        atol, rtol = float(tolerance), 0.0

    def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, bool, float]:
        diff = np.abs(a - b)
        bound = atol + rtol * np.abs(b)
        ok = bool(np.isfinite(diff).all() and (diff <= bound).all())  # inf <= atol + rtol * inf is True
        return float(diff.max()), ok, float((diff / bound).max())

    topk_report: dict[str, Any] = {}
    if info.top_k:
        k = info.top_k
        values = records["values"].astype(np.float32)
        indices = records["indices"].astype(np.int64)
        lse = records["logsumexp"].astype(np.float32)
        live_lse = torch.logsumexp(torch.from_numpy(live).double(), dim=1).float().numpy()
        live_kth = -np.sort(-live, axis=1)[:, k - 1]
        stored_of_live = np.take_along_axis(live, indices, axis=1)
        max_diff, ok, ratio = compare(stored_of_live, values)
        lse_max, lse_ok, lse_ratio = compare(live_lse, lse)
        # a stored class may trail the live k-th largest logit only by the tolerance (ties)
        slack = live_kth[:, None] - stored_of_live
        classes_ok = bool((slack <= atol + rtol * np.abs(live_kth)[:, None]).all())
        ok, ratio = ok and lse_ok and classes_ok, max(ratio, lse_ratio)
        topk_report = {"top_k": k, "logsumexp_max_abs_diff": lse_max, "topk_classes_match": classes_ok,
                       **topk_error(live, values, indices, lse)}
        cached_argmax = indices[:, 0]
    else:
        cached = records.astype(np.float32)
        max_diff, ok, ratio = compare(live, cached)
        cached_argmax = cached.argmax(1)
    test_max, test_ok, test_ratio = compare(live_test, test_logits[test_idx].astype(np.float32))
    return {
        "cache": str(cache_path),
        "checkpoint": str(checkpoint),
        "pairs": int(len(flat)),
        "test_samples": int(n_test),
        "view_plan": plan.kind,
        "max_abs_diff": max_diff,
        "test_max_abs_diff": test_max,
        "worst_diff_over_tolerance": max(ratio, test_ratio),
        "argmax_agreement": float((live.argmax(1) == cached_argmax).mean()),
        "params_match_policy": params_match,
        "dtype": info.dtype,
        "atol": atol,
        "rtol": rtol,
        "device": str(dev),
        **topk_report,
        "passed": ok and test_ok and params_match,
    }


def topk_error(live: np.ndarray, values: np.ndarray, indices: np.ndarray, lse: np.ndarray) -> dict[str, float]:
    """How far top-k rows' reconstructions are from the live teacher's full softmax.

    ``topk_kl_mean`` / ``topk_kl_max``: KL(live || reconstruction) per row (nats);
    ``topk_tv_max``: largest total variation distance (half the L1 distance, 0..1);
    ``topk_tail_mass_mean``: the live probability mass outside the top k, which the
    reconstruction spreads evenly.
    """
    from bandistill.soft_targets import topk_log_probs

    log_p = torch.log_softmax(torch.from_numpy(live).double(), dim=1)
    log_q = topk_log_probs(torch.from_numpy(values), torch.from_numpy(indices), torch.from_numpy(lse),
                           live.shape[1]).double()
    p = log_p.exp()
    kl = (p * (log_p - log_q)).sum(dim=1)
    tv = 0.5 * (p - log_q.exp()).abs().sum(dim=1)
    tail = 1.0 - p.gather(1, torch.from_numpy(indices)).sum(dim=1)
    return {"topk_kl_mean": float(kl.mean()), "topk_kl_max": float(kl.max()), "topk_tv_max": float(tv.max()),
            "topk_tail_mass_mean": float(tail.mean())}
