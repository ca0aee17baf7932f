"""Turning what a user typed into files: quoted globs, folders, folders of runs, export plans.

Argument handling only: the library (:mod:`bandistill.onnx`) takes explicit file paths.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Sequence

from bandistill.errors import UserError

_GLOB_CHARS = set("*?[")


def _unique(paths: Iterable[Path]) -> list[Path]:
    """Drop repeats of the same file (by resolved path), keeping the first spelling and the order."""
    seen: set[Path] = set()
    out = []
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def resolve_onnx_paths(specs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files from paths, quoted globs (``'onnx/gen*.onnx'``) and folders (their ``*.onnx``).

    A shell-expanded glob arrives as several paths and needs nothing special. Duplicates
    (the same file twice) are dropped. Raises :class:`UserError` for a path that does not
    exist, a glob that matches nothing, or no path at all.
    """
    found: list[Path] = []
    for raw in specs:
        text = os.fspath(raw)
        p = Path(text).expanduser()
        if p.is_dir():
            inside = sorted(p.glob("*.onnx"))
            if not inside:
                raise UserError(f"folder {p} holds no .onnx file; export generations with 'bandistill export'")
            found.extend(inside)
        elif p.exists():
            found.append(p)
        elif _GLOB_CHARS & set(text):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text)) if Path(m).is_file())
            if not matches:
                raise UserError(f"--onnx {text} matches no file; check the folder (e.g. ls {Path(text).parent})")
            found.extend(matches)
        else:
            raise UserError(f"ONNX model {p} does not exist; pass files written by 'bandistill export'")
    if not found:
        raise UserError("no ONNX model given: pass --onnx gen*.onnx (files written by 'bandistill export')")
    return _unique(found)


# -- export: checkpoints and where each goes -------------------------------------------------------
def _is_run_folder(path: Path) -> bool:
    from bandistill.train import MODEL_FILE

    return path.is_dir() and (path / MODEL_FILE).is_file()


def expand_checkpoints(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Checkpoint files from files, run folders and folders of runs (each run's ``model.pt``)."""
    from bandistill.train import MODEL_FILE

    found: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise UserError(f"checkpoint {p} does not exist; pass a model.pt, a run folder or a folder of runs")
        if p.is_file():
            found.append(p)
        elif _is_run_folder(p):
            found.append(p / MODEL_FILE)
        else:
            runs = sorted(c / MODEL_FILE for c in p.iterdir() if _is_run_folder(c))
            if not runs:
                raise UserError(f"{p} holds no run folder with a {MODEL_FILE}; pass a model.pt or a folder of runs")
            found.extend(runs)
    return _unique(found)


def _run_name(ckpt: Path) -> str:
    """``runs/gen1/model.pt`` -> ``gen1``; ``foo.pt`` -> ``foo``."""
    from bandistill.train import LAST_FILE, MODEL_FILE

    return ckpt.parent.name if ckpt.name in (MODEL_FILE, LAST_FILE) and ckpt.parent.name else ckpt.stem


def plan_exports(checkpoints: Sequence[str | os.PathLike], outs: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Pair checkpoints with output files.

    * as many ``outs`` as checkpoints: pairs, in order;
    * one ``out`` ending in ``.onnx`` and one checkpoint: that file;
    * one ``out`` that is a folder (not ending in ``.onnx``): ``<out>/<run name>.onnx`` for
      every checkpoint, the run name being the checkpoint's folder (``runs/gen1`` -> ``gen1.onnx``).
    """
    if not checkpoints:
        raise UserError("no checkpoint given: pass --checkpoint runs/gen0/model.pt (or a folder of runs)")
    if not outs:
        raise UserError("no --out given: pass --out gen0.onnx, or a folder for several checkpoints")
    ckpts = expand_checkpoints(checkpoints)
    out_paths = [Path(o).expanduser() for o in outs]
    if len(out_paths) == len(ckpts) and not (len(ckpts) == 1 and out_paths[0].suffix != ".onnx"):
        pairs = list(zip(ckpts, out_paths))
    elif len(out_paths) == 1 and out_paths[0].suffix != ".onnx":
        folder = out_paths[0]
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder} is a file; for several checkpoints give a folder")
        pairs = [(c, folder / f"{_run_name(c)}.onnx") for c in ckpts]
    else:
        raise UserError(
            f"{len(ckpts)} checkpoints but {len(out_paths)} --out values: give one --out per --checkpoint, "
            "or one --out folder (e.g. --out onnx/)"
        )
    names = [p.resolve() for _, p in pairs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise UserError(f"two checkpoints would be exported to {dup}; give one --out per --checkpoint")
    return pairs
