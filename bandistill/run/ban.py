"""``bandistill ban``: every seed's chain (:mod:`bandistill.run.chain`), planned first, then run, then reported.

A re-run never discards finished work unasked. Options it is not given come from the run's
``ban.json``; every option is checked, then the whole run is *planned* (the stages walked
without running them) before anything on disk changes. When the options would redo a
finished stage the run is refused with the list of those stages, unless ``supersede`` is
set: then their outputs are moved under ``<out>/superseded/<time>/`` (never deleted) and
they run again. One process at a time works in a run folder (:mod:`bandistill.lock`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from bandistill.cache.schema import check_top_k
from bandistill.data import load_dataset
from bandistill.errors import UserError
from bandistill.lock import folder_lock
from bandistill.report import REPORT_FILES
from bandistill.run.chain import DERIVED, Chain
from bandistill.run.manifest import Manifest
from bandistill.run.options import BanOptions, record_options
from bandistill.run.repeats import move_chain, single_seed_moves
from bandistill.run.report import build_report
from bandistill.run.superseding import Superseded, refusal


def run_ban(opts: BanOptions, out: str | Path, *, supersede: bool = False, progress: bool = True,
            log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Run (or complete) a born-again experiment in ``out`` and write its report.

    Refuses (:class:`UserError`, nothing changed on disk) options that would redo finished
    stages, unless ``supersede``: then their outputs are moved under ``out/superseded/``.
    """
    if not str(out).strip():
        raise UserError("--out is empty; name the experiment folder, e.g. --out runs/demo")
    opts.validate()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    dataset = load_dataset(opts.dataset, opts.data_dir, image_size=opts.image_size)
    check_top_k(opts.top_k, dataset.num_classes)  # needs the class count; before anything is written or moved
    if opts.transfer_ends:
        from bandistill.transfer import check_transferable

        check_transferable(opts.model, opts.student_model, dataset.num_classes, dataset.in_channels,
                           dataset.image_shape)
    with folder_lock(out):
        seeds = opts.chain_seeds()
        moves = single_seed_moves(opts, out)
        plans = []
        for seed in seeds:
            chain = Chain(opts, moves.get(seed, opts.chain_dir(out, seed)), seed, log, progress, dataset=dataset,
                          planning=True)
            chain.run()
            plans.append(chain)
        # derived stages (the ensemble's evaluation) are redone without asking: their old outputs are moved aside
        changed = {c.root: {s: why for s, why in c.changed.items() if s not in DERIVED} for c in plans}
        changed = {root: stages for root, stages in changed.items() if stages}
        if changed and not supersede:
            raise UserError(refusal(changed, out))
        if not supersede:
            refuse_fewer_generations(opts, plans, out)
        aside = Superseded(out, log)
        for seed, root in moves.items():  # the single-seed chain becomes seed-<s>/ of a --repeats run
            move_chain(root, opts.chain_dir(out, seed), log)
        for chain in plans:
            if chain.changed:
                root = opts.chain_dir(out, chain.seed)
                for stage, why in chain.changed.items():
                    aside.move([root / p.relative_to(chain.root) for p in chain.replaces[stage]],
                               f"{stage} superseded ({'; '.join(why[:2])})")
                Manifest(root).forget(list(chain.changed))
        record_options(opts, out)
        worked = []
        for seed in seeds:
            chain = Chain(opts, opts.chain_dir(out, seed), seed, log, progress, dataset=dataset, supersede=supersede,
                          aside=aside)
            chain.run()
            worked += chain.trained
        if worked:  # the report changes with what ran: the old one is kept, not overwritten
            aside.move([out / name for name in REPORT_FILES], "the report is redone")
        report = build_report(out)
    return {"out": str(out), "stages_run": worked, **report}


def refuse_fewer_generations(opts: BanOptions, plans: list[Chain], out: Path) -> None:
    """Lowering --generations on a run that trained more is refused (raising it trains only the new ones)."""
    for chain in plans:
        trained = [int(m.group(1)) for name in chain.manifest.stages
                   if (m := re.fullmatch(r"gen(\d+)\.train", name))]
        if trained and max(trained) > opts.generations:
            raise UserError(f"--generations {opts.generations} is lower than the {max(trained)} generations "
                            f"{out} holds: lowering it is refused (their ensemble and report would leave "
                            f"generations {opts.generations + 1}..{max(trained)} out); pass --generations "
                            f"{max(trained)} or more, or --supersede to redo the ensemble without them "
                            "(the old one is moved aside, the generations stay on disk)")
