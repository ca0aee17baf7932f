"""The bookkeeping of one chain's stages: skip, resume, refuse, supersede, or plan without running.

A stage is a name (``gen1.train``), a *signature* (what shapes its output, with the content
digests of its inputs), its outputs and an action. :meth:`Stages.stage` asks the manifest
(:mod:`bandistill.run.manifest`) for the stage's state and acts on it; the chain's algorithm
(:mod:`bandistill.run.chain`) only lists its stages.

Planning walks the stages before anything changes on disk, with the digests the manifest
recorded. A stage that will *resume* (interrupted, or its output deleted) is expected to give
back the content its later stages were made from: training and dumping are deterministic
and resume exactly. So those later stages are not "changed" at planning (that would refuse
finishing an interrupted repair, or make ``--supersede`` redo them); they are checked
again once the resumed stage has its real digest, and only a real difference refuses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from bandistill.errors import UserError
from bandistill.run.manifest import CHANGED, DONE, NEW, RESUME, Manifest
from bandistill.run.superseding import Superseded, refusal

#: Stage state while planning: recorded with this signature but for the digest of an upstream
#: stage that will resume; decided when that stage has run (see the module docstring).
PENDING = "pending"
_RESUMED = "<resumed output of "


class Stages:
    """The stages of one folder with one manifest.

    With ``planning=True`` :meth:`stage` runs nothing and records each stage's state in
    ``plan`` (stage -> done/changed/resume/new) and, for the changed ones, why (``changed``)
    and what re-running them would replace (``replaces``).
    """

    def __init__(self, root: Path, log: Callable[[str], None], *, planning: bool = False, supersede: bool = False,
                 aside: Superseded | None = None):
        self.root, self.log = root, log
        self.planning, self.supersede = planning, supersede
        self.aside = aside or Superseded(root, log)
        if not planning:
            self.root.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(root)
        self.trained: list[str] = []  # stages that did work in this invocation
        self.plan: dict[str, str] = {}
        self.changed: dict[str, list[str]] = {}
        self.replaces: dict[str, list[Path]] = {}

    def stage(self, name: str, signature: dict[str, Any], outputs: list[Path], action: Callable[[], Any],
              cleanup: list[Path]) -> Any:
        """Skip, resume or run one stage. A changed one is refused unless superseding (``cleanup`` moved aside)."""
        m = self.manifest
        state = m.status(name, signature)
        where = f"{self.root.name}/{name}"
        if self.planning:
            if state == CHANGED and _only_resumed_inputs_differ(m.record(name)["signature"], signature):
                state = PENDING
            self.plan[name] = state
            if state == CHANGED:
                self.changed[name] = m.changes(name, signature)
                self.replaces[name] = cleanup
            return None
        if state == DONE:
            self.log(f"{where}: up to date, skipped")
            return m.result(name)
        if state == CHANGED:
            # Planned runs move changed stages aside up front; reaching this means an input was rebuilt
            # with other content than the one this stage was made from.
            changes = m.changes(name, signature)
            if not self.supersede:
                raise UserError(refusal({self.root: {name: changes}}, self.root))
            self.aside.move(cleanup, f"{where} superseded")
            m.forget([name])
            self.log(f"{where}: running again ({'; '.join(changes[:3])})")
        elif state == RESUME:
            damaged = [self.root / rel for rel in m.damaged_outputs(name) if (self.root / rel).exists()]
            if damaged:  # truncated or replaced: keep it, out of the way of the rebuilt one
                self.aside.move(damaged, f"{where}: output damaged or replaced")
            self.log(f"{where}: resuming (interrupted, or its output is missing or damaged)")
        else:
            self.log(f"{where}: running")
        m.start(name, signature)
        result = action()
        m.finish(name, signature, outputs, result)
        self.trained.append(name)
        return result

    def digest(self, stage: str, output: Path) -> str:
        """The content digest a downstream signature records for ``output`` of ``stage``.

        While planning, a stage that will run anew has no digest yet: a placeholder stands in,
        so every recorded stage downstream of it shows as changed. One that will resume stands
        for the content it had (the recorded digest; a marker when an interruption lost it).
        """
        if self.planning:
            if self.plan.get(stage) in (CHANGED, NEW):
                return f"<output of {stage}>"
            if (self.manifest.record(stage) or {}).get("status") != "done":
                return f"{_RESUMED}{stage}>"
        return self.manifest.digest(stage, output)


def _only_resumed_inputs_differ(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether every difference between two signatures is an input that a resuming stage will give back."""
    def explained(was: Any, now: Any) -> bool:
        if was == now:
            return True
        if isinstance(was, list) and isinstance(now, list) and len(was) == len(now):
            return all(explained(a, b) for a, b in zip(was, now))
        return isinstance(now, str) and now.startswith(_RESUMED)

    return all(explained(old.get(k), new.get(k)) for k in set(old) | set(new))


def summary(result: Any) -> Any:
    """What a stage records in the manifest: its JSON-able summary."""
    return json.loads(json.dumps(result, default=str)) if result is not None else None
