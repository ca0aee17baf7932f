"""Superseding: a re-run never discards finished work unasked.

When options would redo finished stages the run is refused (:func:`refusal`, one line naming
the stages and why) unless ``--supersede`` is given; then those stages' outputs are moved under
``<out>/superseded/<time>/`` (:class:`Superseded`), never deleted, with copies of the records
(``ban.json``, every ``manifest.json``) they were made under.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from bandistill.errors import UserError
from bandistill.run.manifest import MANIFEST_FILE
from bandistill.run.options import OPTIONS_FILE

#: Where superseded outputs are moved (one folder per re-run that superseded something).
SUPERSEDED_DIR = "superseded"


class Superseded:
    """``<out>/superseded/<time>/``: where outputs a re-run replaces are moved, never deleted."""

    def __init__(self, out: Path, log: Callable[[str], None]):
        self.out, self.log = Path(out), log
        self.folder: Path | None = None

    def move(self, paths: list[Path], why: str) -> None:
        """Move each existing path to the same place under this re-run's superseded folder."""
        existing = [p for p in paths if p.exists() or p.is_symlink()]
        if not existing:
            return
        for p in existing:  # the last guard of "nothing outside --out is touched" (moving a link moves the link)
            rel = os.path.normpath(os.path.relpath(p, self.out))
            if rel == "." or rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
                raise UserError(f"refusing to move {p} aside: it is not inside {self.out}; nothing was moved")
        if self.folder is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder, n = self.out / SUPERSEDED_DIR / stamp, 1
            while folder.exists():
                n += 1
                folder = self.out / SUPERSEDED_DIR / f"{stamp}-{n}"
            folder.mkdir(parents=True)
            self.folder = folder
            # the record of what is being superseded: the options and every chain's manifest
            for record in [self.out / OPTIONS_FILE, self.out / MANIFEST_FILE, *self.out.glob(f"seed-*/{MANIFEST_FILE}")]:
                if record.is_file():
                    dest = folder / record.relative_to(self.out)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(record, dest)
        for p in existing:
            rel = p.relative_to(self.out)
            dest = self.folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():  # moved twice in one re-run (a damaged output, then its stage): keep both
                dest = dest.with_name(f"{dest.name}.{time.time_ns()}")
            os.replace(p, dest)
            self.log(f"{why}: moved {rel} to {dest.relative_to(self.out)}")


def refusal(changed: dict[Path, dict[str, list[str]]], out: Path) -> str:
    """One line: which finished stages these options would redo, why, and the way out."""
    stages = [f"{root.name}/{s}" if root != out else s for root, names in changed.items() for s in names]
    reasons = next(iter(next(iter(changed.values())).values()))
    listed = ", ".join(stages[:12]) + (f" and {len(stages) - 12} more" if len(stages) > 12 else "")
    return (f"these options would redo finished stages of {out} ({'; '.join(reasons[:2])}): {listed}; "
            f"rerun with the run's own options (leave them out to keep {OPTIONS_FILE}'s), or pass --supersede "
            f"to redo them (their outputs are moved to {out / SUPERSEDED_DIR}/, nothing is deleted)")
