"""``bandistill verify-cache``: replay cached views through the live teacher and compare logits."""

from __future__ import annotations

import click

from bandistill.cli.output import print_json, print_mapping
from bandistill.errors import VerificationError
from bandistill.verify import verify_cache


@click.command("verify-cache")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="The teacher's model.pt.")
@click.option("--cache", "cache_path", required=True, type=click.Path(dir_okay=False), help="Cache to check.")
@click.option("--samples", type=int, default=64, show_default=True, help="Random (sample, view) pairs to replay.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the dataset lives.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the pair draw.")
@click.option("--tolerance", type=float, default=None, help="Absolute bound (default: from the cache's dtype).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(checkpoint, cache_path, samples, data_dir, device, seed, tolerance, as_json) -> None:
    """Check that a cache's logits are its teacher's on the views its parameters rebuild (exit 1 if not)."""
    report = verify_cache(checkpoint, cache_path, samples=samples, data_dir=data_dir, device=device, seed=seed,
                          tolerance=tolerance)
    if as_json:
        print_json(report)
    elif "damaged" not in report:  # a damaged cache was not compared: its one line says why
        keys = ("pairs", "view_plan", "max_abs_diff", "test_samples", "test_max_abs_diff", "worst_diff_over_tolerance",
                "argmax_agreement", "params_match_policy", "dtype", "atol", "rtol", "device", "top_k",
                "logsumexp_max_abs_diff", "topk_classes_match")
        print_mapping(f"verify {report['cache']}: {'passed' if report['passed'] else 'FAILED'}",
                      {k: report[k] for k in keys if k in report})
        if "top_k" in report:
            click.echo(f"top-{report['top_k']} error (not a failure: what the compact form gives up): "
                       f"KL(teacher || reconstruction) mean {report['topk_kl_mean']:.2e} max "
                       f"{report['topk_kl_max']:.2e} nats, total variation max {report['topk_tv_max']:.2e}, "
                       f"mass outside the top {report['top_k']} mean {report['topk_tail_mass_mean']:.2e}")
    if "damaged" in report:
        raise VerificationError(report["damaged"])
    if not report["passed"]:
        why = ("stored view parameters differ from the view policy" if not report["params_match_policy"] else
               "stored top-k classes are not the teacher's top k" if report.get("topk_classes_match") is False else
               f"largest difference {report['max_abs_diff']:.3g} (test {report['test_max_abs_diff']:.3g}) exceeds "
               f"the tolerance for {report['dtype']} (atol {report['atol']:g}, rtol {report['rtol']:g})")
        raise VerificationError(f"{cache_path}: {why}; the cache does not match its teacher, dump it again")
