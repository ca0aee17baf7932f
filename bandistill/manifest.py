"""The manifest of a multi-stage run: what each stage produced, and from what.

A stage is identified by a name (``gen1.train``) and a *signature*: the options that
shape its output plus the digests of the files it reads. A stage whose recorded
signature equals the current one and whose outputs are still on disk (same sizes) is
complete and is skipped. A different signature means the stage, and through the
digests everything downstream of it, must be re-run; :meth:`Manifest.changes` says why.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bandistill.checkpoint import atomic_write, file_digest

MANIFEST_FILE = "manifest.json"


class Manifest:
    """A JSON file of stage records, rewritten atomically after every change."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / MANIFEST_FILE
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self.stages = json.loads(self.path.read_text()).get("stages", {})
            except (json.JSONDecodeError, AttributeError):
                self.stages = {}  # unreadable: every stage re-validates by re-running

    def _save(self) -> None:
        text = json.dumps({"stages": self.stages}, indent=2, sort_keys=True)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def record(self, stage: str) -> dict[str, Any] | None:
        return self.stages.get(stage)

    def is_done(self, stage: str, signature: dict[str, Any]) -> bool:
        """Recorded as done with this signature, and every output still there at its size."""
        rec = self.stages.get(stage)
        if not rec or rec.get("status") != "done" or rec.get("signature") != signature:
            return False
        return all((self.root / p).is_file() and (self.root / p).stat().st_size == meta["size"]
                   for p, meta in rec.get("outputs", {}).items())

    def changes(self, stage: str, signature: dict[str, Any]) -> list[str]:
        """Human-readable differences from the recorded signature (empty when none is recorded)."""
        rec = self.stages.get(stage)
        if not rec:
            return []
        old = rec.get("signature", {})
        keys = sorted(set(old) | set(signature))
        return [f"{k} {old.get(k)!r} -> {signature.get(k)!r}" for k in keys if old.get(k) != signature.get(k)]

    def start(self, stage: str, signature: dict[str, Any]) -> None:
        self.stages[stage] = {"status": "running", "signature": signature, "started": time.time()}
        self._save()

    def finish(self, stage: str, signature: dict[str, Any], outputs: list[str | Path], result: Any = None) -> None:
        """Mark a stage done, with the size and digest of each output (paths under root)."""
        files = {}
        for p in outputs:
            rel = str(Path(p).resolve().relative_to(self.root.resolve()))
            files[rel] = {"size": (self.root / rel).stat().st_size, "digest": file_digest(self.root / rel)}
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

    def digest(self, stage: str, output: str | Path) -> str:
        """The recorded digest of one output of a done stage (what downstream signatures use)."""
        rel = str(Path(output).resolve().relative_to(self.root.resolve()))
        return self.stages[stage]["outputs"][rel]["digest"]

    def result(self, stage: str) -> Any:
        return self.stages[stage].get("result")
