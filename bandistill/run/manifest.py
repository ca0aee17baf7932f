"""The manifest of a multi-stage run: what each stage produced, and from what.

A stage is identified by a name (``gen1.train``) and a *signature*: the options that
shape its output plus the content digests (:mod:`bandistill.identity`) of the files it
reads. Each output is recorded with its content digest, and a stage is complete only
while its recorded signature equals the current one *and* every output still has that
digest: a deleted, truncated or replaced output (even one of the same size) is not done.

Because downstream signatures hold upstream *content* digests, an input rebuilt with the
same content (a cache dumped again, ``model.pt`` rewritten from ``last.pt``) leaves every
later stage complete; a different content makes them ``changed`` (:meth:`Manifest.status`).

Signatures gain keys as the tool grows (the dump's ``top_k`` and ``epochs``). A new key's
``None`` means what its absence meant, so a key one signature lacks equals ``None`` in the
other (:func:`signature_changes`): a run folder made before the key existed stays done.

Every path in the file is untrusted (it is a file anyone can edit): an output is a path
*under* the run folder or the manifest is refused as damaged, so a re-run never reads,
moves or replaces anything outside ``--out``.

Checking that an output still has its content means hashing it (a cache: every byte). Each
output is recorded with the (size, mtime, ctime, inode) it was hashed at; while those are
unchanged the recorded digest stands and the file is not read again (as make and git do).
A file rewritten in place changes its mtime and ctime, one replaced changes its inode (a
rewrite of the same size within the filesystem's timestamp granularity of the hash, a few
milliseconds, would go unseen: the run folder's lock keeps other bandistill writers out).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bandistill.atomic import atomic_write
from bandistill.errors import UserError
from bandistill.identity import file_digest, output_digest

MANIFEST_FILE = "manifest.json"

#: Stage states: complete; recorded with another signature (re-running discards its work); recorded
#: with this signature but interrupted or with an output missing or damaged; never recorded.
DONE, CHANGED, RESUME, NEW = "done", "changed", "resume", "new"


class Manifest:
    """A JSON file of stage records, rewritten atomically after every change."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / MANIFEST_FILE
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self.stages = _read(self.path, self.root)

    def _save(self) -> None:
        text = json.dumps({"stages": self.stages}, indent=2, sort_keys=True)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def record(self, stage: str) -> dict[str, Any] | None:
        return self.stages.get(stage)

    def damaged_outputs(self, stage: str) -> list[str]:
        """Recorded outputs (paths under root) that are missing or no longer have their recorded content."""
        rec = self.stages.get(stage) or {}
        return [rel for rel, meta in rec.get("outputs", {}).items() if not self._intact(rel, meta)]

    def _intact(self, rel: str, meta: dict[str, Any]) -> bool:
        path = self.root / rel
        if not path.is_file():
            return False
        if meta.get("stat") is not None and meta["stat"] == _stat_key(path):
            return True  # not touched since it was hashed
        if meta.get("identity") == "content":
            return output_digest(path) == meta["digest"]
        return file_digest(path) == meta.get("digest")  # recorded before content identity existed

    def is_done(self, stage: str, signature: dict[str, Any]) -> bool:
        """Recorded as done with this signature, and every output still there with its content."""
        return self.status(stage, signature) == DONE

    def status(self, stage: str, signature: dict[str, Any]) -> str:
        """:data:`DONE`, :data:`CHANGED`, :data:`RESUME` or :data:`NEW` (see the module docstring)."""
        rec = self.stages.get(stage)
        if not rec:
            return NEW
        if signature_changes(rec.get("signature", {}), signature):
            return CHANGED
        if rec.get("status") != "done" or self.damaged_outputs(stage):
            return RESUME
        return DONE

    def changes(self, stage: str, signature: dict[str, Any]) -> list[str]:
        """Human-readable differences from the recorded signature (empty when none is recorded)."""
        rec = self.stages.get(stage)
        if not rec:
            return []
        return signature_changes(rec.get("signature", {}), signature)

    def start(self, stage: str, signature: dict[str, Any]) -> None:
        self.stages[stage] = {"status": "running", "signature": signature, "started": time.time()}
        self._save()

    def finish(self, stage: str, signature: dict[str, Any], outputs: list[str | Path], result: Any = None) -> None:
        """Mark a stage done, with the content digest of each output (paths under root)."""
        files = {}
        for p in outputs:
            rel = str(Path(p).resolve().relative_to(self.root.resolve()))
            stat = _stat_key(self.root / rel)  # before hashing: a write during the hash shows as a change
            files[rel] = {"digest": output_digest(self.root / rel), "identity": "content", "stat": stat}
        rec = self.stages.get(stage, {})
        self.stages[stage] = {
            "status": "done",
            "signature": signature,
            "started": rec.get("started", time.time()),
            "finished": time.time(),
            "outputs": files,
            "result": result,
        }
        self._save()

    def forget(self, stages: list[str]) -> None:
        """Drop the records of ``stages`` (their outputs were moved aside; they will run anew)."""
        for stage in stages:
            self.stages.pop(stage, None)
        self._save()

    def digest(self, stage: str, output: str | Path) -> str:
        """The recorded digest of one output of a done stage (what downstream signatures use)."""
        rel = str(Path(output).resolve().relative_to(self.root.resolve()))
        return self.stages[stage]["outputs"][rel]["digest"]

    def result(self, stage: str) -> Any:
        return self.stages[stage].get("result")


def signature_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two signatures; a key one of them lacks counts as ``None``."""
    keys = sorted(set(old) | set(new))
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _stat_key(path: Path) -> list[int]:
    """What changes when a file is rewritten or replaced: size, mtime, ctime (ns) and inode."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def inside(root: Path, rel: str) -> bool:
    """Whether ``rel`` (a path read from a run's own files) names something under ``root``, symlinks resolved."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        return False
    base = root.resolve()
    target = (base / rel).resolve()
    return target != base and target.is_relative_to(base)


def _read(path: Path, root: Path) -> dict[str, dict[str, Any]]:
    """The stage records of a manifest file, or :class:`UserError` when it is damaged or edited out of shape."""
    try:
        data = json.loads(path.read_text())
        stages = data["stages"]
        ok = isinstance(stages, dict) and all(
            isinstance(rec, dict) and isinstance(rec.get("signature"), dict)
            and isinstance(rec.get("outputs", {}), dict)
            and all(isinstance(m, dict) and isinstance(m.get("digest"), str) for m in rec.get("outputs", {}).values())
            for rec in stages.values()
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
        ok = False
    if not ok:
        raise UserError(f"{path} is damaged (not a bandistill manifest); restore it, or move it aside and rerun: "
                        "finished generations are then recognised from their files")
    for stage, rec in stages.items():
        for rel in rec.get("outputs", {}):
            if not inside(root, rel):
                raise UserError(f"{path} is damaged: stage {stage} names an output {rel!r} outside {root}; nothing "
                                "was read or moved; restore the manifest, or move it aside and rerun")
    return stages
