"""One seed's born-again chain: the algorithm of ``bandistill ban``, stage by stage.

For k = 0..N: train generation k (gen0 on labels; gen k>0 from the cache of gen k-1's
logits, dumped just before), export it to ONNX; then evaluate every generation and the
ensembles on onnxruntime and merge them into ``bane.onnx``. Each stage calls the same library
function as its stage command. Whether a stage runs, resumes, is skipped or refused is
:class:`bandistill.run.stages.Stages`' business, not this module's.

``--variants``: generation 0's cache also teaches one more student per variant
(``gen1[<name>].train`` into ``gen1-<name>/``, exported beside the generations); the chain
goes on from the variant ``--chain-from`` names (its student is ``gen1/``, BAN-1), and its
recipe teaches generations 2..N. ``--bane-teacher``: generation k learns from the average of
generations 0..k-1's caches, all dumped with the chain's seed so that they hold the same views.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from bandistill.cache.schema import partial_path
from bandistill.atomic import atomic_write
from bandistill.checkpoint import load_checkpoint
from bandistill.data import ImageDataset, eval_tensor, load_dataset
from bandistill.launch import run_stage
from bandistill.run.manifest import CHANGED
from bandistill.run.options import BanOptions
from bandistill.run.report import EVALUATION_FILE, network_label, parameters_of, views_seen
from bandistill.run.stages import Stages, summary
from bandistill.run.superseding import Superseded
from bandistill.sharded_dump import all_shard_files
from bandistill.train import MODEL_FILE, TrainConfig
from bandistill.variants import Variant

#: Stages derived from the others and cheap to redo: when their inputs change (a generation or a variant
#: added) they are redone without asking, their old outputs moved aside (bandistill.run.ban).
DERIVED = ("ensemble",)
#: Options that never change a stage's result (where things run, how much memory they may use).
NON_RESULT_KEYS = ("device", "data_dir", "download", "device_cache_gb", "teacher_cache", "transfer_ends_from")


class Chain(Stages):
    """The stages of one seed's chain of generations, in one folder with one manifest."""

    def __init__(self, opts: BanOptions, root: Path, seed: int, log: Callable[[str], None], progress: bool, *,
                 dataset: ImageDataset | None = None, planning: bool = False, supersede: bool = False,
                 aside: Superseded | None = None):
        super().__init__(root, log, planning=planning, supersede=supersede, aside=aside)
        self.opts, self.seed, self.progress, self.dataset = opts, seed, progress, dataset

    def run(self) -> dict[str, Any]:
        from bandistill.onnx.export import export_checkpoint

        o = self.opts
        if self.dataset is None:  # once, for signatures, export parity and evaluation
            self.dataset = load_dataset(o.dataset, o.data_dir, image_size=o.image_size)
        fingerprint = self.dataset.fingerprint
        lead = o.chain_variant()  # generation 1's student the chain goes on from (its recipe: every generation's)
        checkpoints, onnx_files, caches, variant_files = [], [], [], {}
        # generation 0 is trained on labels, or imported from weights the user has (``--teacher``)
        made = lambda k: "gen0.import" if k == 0 and o.teacher else f"gen{k}.train"  # noqa: E731
        for k in range(o.generations + 1):
            gen_dir = self.root / f"gen{k}"
            ckpt = gen_dir / MODEL_FILE
            config = TrainConfig(
                model=o.model if k == 0 else lead.model or o.student_model or o.model,
                dataset=o.dataset, data_dir=o.data_dir, image_size=o.image_size, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
                weight_decay=o.weight_decay, schedule=o.schedule, seed=self.seed + k, device=o.device,
            )
            inputs: dict[str, Any] = {"dataset_fingerprint": fingerprint}
            if k > 0:
                cache = self.root / "cache" / f"gen{k - 1}.h5"
                teacher_ckpt = checkpoints[-1]
                # the BANE as teacher averages caches of the same views: every dump then uses the chain's seed
                dump_seed = self.seed if o.bane_teacher else self.seed + k - 1
                dump_sig = {"teacher": self.digest(made(k - 1), teacher_ckpt), "views": o.views,
                            "dtype": o.dtype, "seed": dump_seed, "dataset_fingerprint": fingerprint,
                            "top_k": o.top_k or None, "epochs": o.epochs if str(o.views) == "epochs" else None}
                dump_args = dict(checkpoint=str(teacher_ckpt), dataset=o.dataset, out=str(cache), views=o.views,
                                 top_k=o.top_k, epochs=dump_sig["epochs"], data_dir=o.data_dir, seed=dump_seed,
                                 dtype=o.dtype, device=o.device, overwrite=False)
                self.stage(
                    f"gen{k - 1}.dump", dump_sig, [cache],
                    lambda: summary(run_stage("dump", dump_args, o.nproc_per_node, progress=self.progress,
                                              log=self.log)),
                    cleanup=[cache, Path(partial_path(cache)), *all_shard_files(cache)],
                )
                caches.append(cache)
                if o.bane_teacher and k > 1:  # generation k from the average of generations 0..k-1
                    config.teacher_cache = [str(c) for c in caches]
                    config.teacher_average = o.teacher_average
                    inputs["cache"] = [self.digest(f"gen{j}.dump", c) for j, c in enumerate(caches)]
                else:
                    config.teacher_cache = str(cache)
                    inputs["cache"] = self.digest(f"gen{k - 1}.dump", cache)
                config.loss, config.temperature, config.alpha = lead.loss, lead.temperature, lead.alpha
                config.warmup_epochs = o.warmup_epochs  # students only: generation 0's recipe stays the paper's
                if o.transfer_ends:
                    config.transfer_ends_from = str(checkpoints[0])
                    inputs["transfer_ends_from"] = self.digest(made(0), checkpoints[0])
            if k == 0:
                self._switched_generation0(gen_dir)
            if k == 0 and o.teacher:
                self._import_teacher(gen_dir, fingerprint)
            else:
                config.validate()
                train_sig = {**{k2: v for k2, v in config.to_dict().items() if k2 not in NON_RESULT_KEYS}, **inputs}
                self.stage(f"gen{k}.train", train_sig, [ckpt],
                           lambda: run_stage("train", {"config": config.to_dict(), "out": str(gen_dir),
                                                       "resume": True}, o.nproc_per_node, progress=self.progress),
                           cleanup=[gen_dir])
            checkpoints.append(ckpt)

            onnx_path = self.root / "onnx" / f"gen{k}.onnx"
            export_sig = {"checkpoint": self.digest(made(k), ckpt), "opset": o.opset}
            self.stage(f"gen{k}.export", export_sig, [onnx_path],
                       lambda: summary(export_checkpoint(ckpt, onnx_path, opset=o.opset, dataset=self.dataset)), cleanup=[onnx_path])
            onnx_files.append(onnx_path)
            if k == 1:  # the other students of generation 0's cache, one per variant
                variant_files = {v.name: self._variant(v, config, train_sig) for v in o.student_variants() if v != lead}

        ens_sig = {"members": [self.digest(f"gen{k}.export", p) for k, p in enumerate(onnx_files)]}
        if variant_files:
            ens_sig["variants"] = {n: self.digest(f"gen1[{n}].export", p) for n, p in variant_files.items()}
        bane, evaluation = self.root / "bane.onnx", self.root / EVALUATION_FILE
        self.stage("ensemble", ens_sig, [bane, evaluation],
                   lambda: self._ensemble(onnx_files, variant_files, bane, evaluation), cleanup=[bane, evaluation])
        return {} if self.planning else json.loads(evaluation.read_text())

    def _switched_generation0(self, gen_dir: Path) -> None:
        """A run whose generation 0 was trained and is now to be imported (``--teacher`` added), or the
        reverse: the finished generation 0 is a changed stage (refused, or moved aside with ``supersede``)."""
        now, before = ("gen0.import", "gen0.train") if self.opts.teacher else ("gen0.train", "gen0.import")
        if not self.manifest.record(before):
            return
        if self.planning:
            self.plan[now] = CHANGED
            self.changed[now] = [f"generation 0 was {'trained' if before == 'gen0.train' else 'imported'}, "
                                 f"now {'imported from --teacher' if self.opts.teacher else 'trained'}"]
            self.replaces[now] = [gen_dir]
        else:  # superseding moved its outputs aside before this pass
            if (gen_dir / MODEL_FILE).exists():
                self.aside.move([gen_dir], f"{self.root.name}/{now} replaces {before}")
            self.manifest.forget([before])

    def _import_teacher(self, gen_dir: Path, fingerprint: str) -> None:
        """Generation 0 from ``--teacher``'s weights; its test accuracy is logged before anything is dumped."""
        from bandistill.identity import file_digest
        from bandistill.import_teacher import import_teacher

        o = self.opts
        signature = {"teacher_weights": file_digest(o.teacher), "model": o.model, "dataset_fingerprint": fingerprint,
                     "image_size": o.image_size,
                     "class_map": o.class_map,
                     "class_map_digest": file_digest(o.class_map) if o.class_map and o.class_map != "wnid" else None}

        def action() -> dict[str, Any]:
            result = import_teacher(o.teacher, o.dataset, gen_dir, model=o.model, data_dir=o.data_dir,
                                    image_size=o.image_size,
                                    class_map=o.class_map, device=o.device, log=self.log, rewrite=True)
            return summary(result)

        self.stage("gen0.import", signature, [gen_dir / MODEL_FILE], action, cleanup=[gen_dir])

    def _variant(self, v: Variant, lead: TrainConfig, lead_sig: dict[str, Any]) -> Path:
        """Generation 1's student of variant ``v``: the chain's gen1 recipe with v's loss, T, alpha, model."""
        from bandistill.onnx.export import export_checkpoint

        o = self.opts
        folder, onnx_path = self.root / f"gen1-{v.folder}", self.root / "onnx" / f"gen1-{v.folder}.onnx"
        config = TrainConfig.from_dict({**lead.to_dict(), "loss": v.loss, "temperature": v.temperature,
                                        "alpha": v.alpha, "model": v.model or o.student_model or o.model})
        config.validate()
        sig = {**lead_sig, **{k: val for k, val in config.to_dict().items() if k not in NON_RESULT_KEYS}}
        ckpt = folder / MODEL_FILE
        self.stage(f"gen1[{v.name}].train", sig, [ckpt],
                   lambda: run_stage("train", {"config": config.to_dict(), "out": str(folder), "resume": True},
                                     o.nproc_per_node, progress=self.progress), cleanup=[folder])
        export_sig = {"checkpoint": self.digest(f"gen1[{v.name}].train", ckpt), "opset": o.opset}
        self.stage(f"gen1[{v.name}].export", export_sig, [onnx_path],
                   lambda: summary(export_checkpoint(ckpt, onnx_path, opset=o.opset, dataset=self.dataset)),
                   cleanup=[onnx_path])
        return onnx_path

    def _ensemble(self, onnx_files: list[Path], variant_files: dict[str, Path], bane: Path,
                  evaluation: Path) -> dict[str, Any]:
        """evaluation.json: every generation, the ensembles, the variants; with providers and collapse checks."""
        import numpy as np

        from bandistill.onnx.members import read_member, run_members, validate_members
        from bandistill.onnx.merge import save_merged_onnx
        from bandistill.report import generation_metrics, variant_metrics

        o, ds = self.opts, self.dataset
        members = [read_member(p) for p in onnx_files]
        validate_members(members)
        images = eval_tensor(ds.test_images)
        log_probs, providers = run_members(members, images, provider="auto")
        labels = ds.test_labels.numpy()
        data = generation_metrics([np.exp(lp) for lp in log_probs], labels)
        names = data["columns"][: len(onnx_files)]  # baseline, BAN-1 .. BAN-N
        data["providers"] = dict(zip(names, providers))  # the onnxruntime provider each member really ran on
        # each generation's checkpoint read once: its collapse verdict and the test accuracy its training reported
        trained = [_collapse_and_accuracy(self.root / f"gen{k}" / MODEL_FILE) for k in range(len(onnx_files))]
        data["collapse"] = {n: collapse for n, (collapse, _) in zip(names, trained)}
        data["taught_by"] = {"bane": o.bane_teacher, "average": o.teacher_average if o.bane_teacher else None}
        if variant_files:
            lead = o.chain_variant().name
            vlog, vproviders = run_members([read_member(p) for p in variant_files.values()], images, provider="auto")
            probs = {lead: np.exp(log_probs[1]), **{n: np.exp(lp) for n, lp in zip(variant_files, vlog)}}
            data["variants"] = {
                "order": [v.name for v in o.student_variants()], "chain": lead,
                "cells": variant_metrics(probs, labels),
                "providers": {lead: providers[1], **dict(zip(variant_files, vproviders))},
                "collapse": {v.name: trained[1][0] if v.name == lead
                             else load_checkpoint(self.root / f"gen1-{v.folder}" / MODEL_FILE).get("collapse")
                             for v in o.student_variants()},
            }
        data["network"] = network_label(o)
        data["parameters"] = parameters_of(o, ds.num_classes, ds.in_channels, ds.image_shape)
        data["seed"] = self.seed
        data["views_seen"] = views_seen(o, ds.view_policy)
        data["train_reported"] = [accuracy for _, accuracy in trained]
        save_merged_onnx(onnx_files, bane)  # every generation, as `bandistill ensemble --onnx gen*.onnx`
        atomic_write(evaluation, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))
        return {"bane": str(bane), "members": len(onnx_files)}


def _collapse_and_accuracy(path: Path) -> tuple[Any, float]:
    """A generation's collapse verdict and reported test accuracy (one read; the weights are let go at once)."""
    ckpt = load_checkpoint(path)
    return ckpt.get("collapse"), ckpt["metrics"]["test_accuracy"]
