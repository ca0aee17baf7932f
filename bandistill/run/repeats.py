"""``--repeats`` on a finished single-seed run: its chain becomes ``seed-<s>/`` instead of being trained again.

One seed writes straight into ``--out``; several write into ``--out/seed-<s>/``
(:meth:`bandistill.run.options.BanOptions.chain_dir`). When a single-seed run gains
``--repeats`` and its seed is the first of them, its files move into ``seed-<s>/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from bandistill.run.manifest import MANIFEST_FILE, Manifest
from bandistill.run.options import BanOptions
from bandistill.run.report import EVALUATION_FILE


def chain_entries(root: Path) -> list[Path]:
    """Files and folders of one seed's chain (moved together when a single-seed run gains --repeats)."""
    names = [MANIFEST_FILE, EVALUATION_FILE, "bane.onnx", "cache", "onnx"]
    return [root / n for n in names if (root / n).exists()] + sorted(p for p in root.glob("gen*") if p.is_dir())


def single_seed_moves(opts: BanOptions, out: Path) -> dict[int, Path]:
    """A single-seed chain at ``out`` that is the first seed of these --repeats: seed -> where it is now."""
    if opts.repeats == 1 or not (out / MANIFEST_FILE).is_file():
        return {}
    rec = Manifest(out).record("gen0.train") or {}
    if rec.get("signature", {}).get("seed") != opts.seed or (out / f"seed-{opts.seed}").exists():
        return {}
    return {opts.seed: out}


def move_chain(src: Path, dest: Path, log: Callable[[str], None]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for p in chain_entries(src):
        os.replace(p, dest / p.name)
    log(f"the single-seed chain in {src} is seed {dest.name} of --repeats: moved it to {dest}")
