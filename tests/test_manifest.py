"""Manifest and stage logic of `bandistill ban`: skip, resume, invalidate (no long training)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bandistill.errors import UserError
from bandistill.run.chain import Chain
from bandistill.run.manifest import Manifest
from bandistill.run.options import BanOptions


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_done_stage_is_skipped_only_with_the_same_signature_and_outputs(tmp_path):
    m = Manifest(tmp_path)
    out = write(tmp_path / "a.txt", "x")
    m.start("s", {"epochs": 2})
    assert not m.is_done("s", {"epochs": 2})  # running is not done
    m.finish("s", {"epochs": 2}, [out], result={"ok": 1})
    reread = Manifest(tmp_path)
    assert reread.is_done("s", {"epochs": 2}) and reread.result("s") == {"ok": 1}
    assert not reread.is_done("s", {"epochs": 3})
    assert reread.changes("s", {"epochs": 3}) == ["epochs 2 -> 3"]
    out.write_text("longer")  # damaged or replaced output
    assert not reread.is_done("s", {"epochs": 2})
    out.write_text("y")  # replaced by other content of the same size: not done either (size used to pass)
    assert not reread.is_done("s", {"epochs": 2}) and reread.status("s", {"epochs": 2}) == "resume"
    out.unlink()
    assert not reread.is_done("s", {"epochs": 2})


def test_digest_changes_with_content(tmp_path):
    m = Manifest(tmp_path)
    out = write(tmp_path / "a.txt", "one")
    m.finish("s", {}, [out])
    first = m.digest("s", out)
    write(out, "two")
    m.finish("s", {}, [out])
    assert m.digest("s", out) != first


@pytest.mark.parametrize("text", ["{not json", "[]", '{"stages": []}', '{"stages": {"gen0.train": "done"}}',
                                  '{"stages": {"gen0.train": {"signature": {}, "outputs": {"a": 3}}}}'])
def test_a_damaged_or_misshapen_manifest_is_one_clear_refusal(tmp_path, text):
    """Hand-edited into the wrong shape it used to raise AttributeError; unreadable, it silently meant 'nothing done'."""
    write(tmp_path / "manifest.json", text)
    with pytest.raises(UserError, match="manifest.json is damaged"):
        Manifest(tmp_path)
    assert (tmp_path / "manifest.json").read_text() == text


class Recorder:
    """A stand-in stage action that writes its output and counts its runs."""

    def __init__(self, path: Path):
        self.path, self.runs = path, 0

    def __call__(self):
        self.runs += 1
        write(self.path, f"run {self.runs}")
        return {"runs": self.runs}


def make_chain(root: Path, messages: list[str], supersede: bool = False) -> Chain:
    return Chain(BanOptions(model="resnet-20", dataset="digits"), root, 0, messages.append, progress=False,
                 supersede=supersede)


def test_stage_skip_resume_and_invalidate(tmp_path):
    messages: list[str] = []
    chain = make_chain(tmp_path, messages)
    action = Recorder(tmp_path / "gen0" / "model.pt")
    sig = {"epochs": 2}
    chain.stage("gen0.train", sig, [action.path], action, cleanup=[tmp_path / "gen0"])
    chain.stage("gen0.train", sig, [action.path], action, cleanup=[tmp_path / "gen0"])
    assert action.runs == 1 and "skipped" in messages[-1]

    # a new invocation (new Chain) sees the same manifest
    again = make_chain(tmp_path, messages)
    again.stage("gen0.train", sig, [action.path], action, cleanup=[tmp_path / "gen0"])
    assert action.runs == 1 and again.trained == []

    # an option that shapes the output changed: refused, nothing touched
    stale = write(tmp_path / "gen0" / "last.pt", "old state")
    with pytest.raises(UserError, match=r"would redo finished stages.*epochs 2 -> 3.*gen0.train.*--supersede"):
        again.stage("gen0.train", {"epochs": 3}, [action.path], action, cleanup=[tmp_path / "gen0"])
    assert action.runs == 1 and stale.read_text() == "old state" and action.path.read_text() == "run 1"

    # superseding: the old outputs are moved aside, never deleted, and the stage runs again
    make_chain(tmp_path, messages, supersede=True).stage("gen0.train", {"epochs": 3}, [action.path], action,
                                                          cleanup=[tmp_path / "gen0"])
    assert action.runs == 2 and action.path.read_text() == "run 2" and not stale.exists()
    [moved] = list((tmp_path / "superseded").glob("*/gen0"))
    assert (moved / "last.pt").read_text() == "old state" and (moved / "model.pt").read_text() == "run 1"
    assert any("epochs 2 -> 3" in m for m in messages)


def test_a_damaged_output_is_moved_aside_and_its_stage_resumed(tmp_path):
    messages: list[str] = []
    action = Recorder(tmp_path / "cache" / "gen0.h5")
    make_chain(tmp_path, messages).stage("gen0.dump", {"v": 1}, [action.path], action, cleanup=[action.path])
    action.path.write_text("run X")  # truncated or replaced, same size
    make_chain(tmp_path, messages).stage("gen0.dump", {"v": 1}, [action.path], action, cleanup=[action.path])
    assert action.runs == 2 and "resuming" in messages[-1]
    assert [p.read_text() for p in (tmp_path / "superseded").glob("*/cache/gen0.h5")] == ["run X"]


def test_interrupted_stage_is_resumed_not_cleaned(tmp_path):
    messages: list[str] = []
    chain = make_chain(tmp_path, messages)
    partial = write(tmp_path / "gen1" / "last.pt", "epoch 3 of 5")

    def crash():
        raise KeyboardInterrupt

    try:
        chain.stage("gen1.train", {"epochs": 5}, [tmp_path / "gen1" / "model.pt"], crash, cleanup=[tmp_path / "gen1"])
    except KeyboardInterrupt:
        pass
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["gen1.train"]["status"] == "running"
    action = Recorder(tmp_path / "gen1" / "model.pt")
    make_chain(tmp_path, messages).stage("gen1.train", {"epochs": 5}, [action.path], action, cleanup=[tmp_path / "gen1"])
    assert partial.exists() and action.runs == 1  # the resume state was kept for the stage to use
    assert "resuming" in messages[-1]


def test_downstream_signature_follows_upstream_digest(tmp_path):
    messages: list[str] = []
    chain = make_chain(tmp_path, messages)
    teacher = Recorder(tmp_path / "gen0" / "model.pt")
    dump = Recorder(tmp_path / "cache" / "gen0.h5")
    chain.supersede = True
    for epochs in (2, 2, 3):
        chain.stage("gen0.train", {"epochs": epochs}, [teacher.path], teacher, cleanup=[tmp_path / "gen0"])
        sig = {"teacher": chain.manifest.digest("gen0.train", teacher.path)}
        chain.stage("gen0.dump", sig, [dump.path], dump, cleanup=[dump.path])
    assert teacher.runs == 2 and dump.runs == 2  # the retrained teacher invalidated its cache
    assert "teacher" in messages[-1]


def test_an_output_outside_the_run_folder_is_refused_and_never_touched(tmp_path):
    """A manifest entry "../victim.txt" used to make `ban` move that file into superseded/."""
    root = tmp_path / "run"
    victim = write(tmp_path / "victim.txt", "someone else's file")
    write(root / "gen0" / "model.pt", "x")
    messages: list[str] = []
    make_chain(root, messages).stage("gen0.train", {"epochs": 2}, [root / "gen0" / "model.pt"], Recorder(root / "gen0" / "model.pt"),
                                     cleanup=[root / "gen0"])
    data = json.loads((root / "manifest.json").read_text())
    for rel in ("../victim.txt", str(victim), "gen0/../../victim.txt"):
        data["stages"]["gen0.train"]["outputs"] = {rel: {"digest": "0" * 16, "identity": "content"}}
        write(root / "manifest.json", json.dumps(data))
        with pytest.raises(UserError, match=r"manifest.json is damaged: stage gen0.train names an output .* outside"):
            make_chain(root, messages).stage("gen0.train", {"epochs": 2}, [root / "gen0" / "model.pt"],
                                             Recorder(root / "gen0" / "model.pt"), cleanup=[root / "gen0"])
        assert victim.read_text() == "someone else's file" and not (root / "superseded").exists()


def test_an_unchanged_output_is_not_hashed_again(tmp_path, monkeypatch):
    """Every re-run used to hash every output (a cache: all its bytes) while planning, and again while running."""
    import bandistill.run.manifest as manifest_module

    out = write(tmp_path / "cache" / "gen0.h5", "logits")
    Manifest(tmp_path).finish("gen0.dump", {"v": 1}, [out])
    hashed: list[str] = []
    real = manifest_module.output_digest
    monkeypatch.setattr(manifest_module, "output_digest", lambda p: hashed.append(str(p)) or real(p))
    assert Manifest(tmp_path).status("gen0.dump", {"v": 1}) == "done" and hashed == []
    time.sleep(0.05)  # past the filesystem's timestamp granularity (a few ms)
    out.write_text("LOGITS")  # rewritten in place, same size: its mtime and ctime change
    assert Manifest(tmp_path).status("gen0.dump", {"v": 1}) == "resume" and len(hashed) == 1


def test_a_signature_key_added_later_means_unchanged_at_its_old_default(tmp_path):
    """The dump signature gained top_k and epochs (None: the old behaviour); runs recorded before were
    refused with an empty reason ("would redo finished stages of X ()")."""
    out = write(tmp_path / "cache" / "gen0.h5", "logits")
    Manifest(tmp_path).finish("gen0.dump", {"teacher": "abc", "views": 4}, [out])
    m = Manifest(tmp_path)
    assert m.status("gen0.dump", {"teacher": "abc", "views": 4, "top_k": None, "epochs": None}) == "done"
    assert m.status("gen0.dump", {"teacher": "abc", "views": 4, "top_k": 5, "epochs": None}) == "changed"
    assert m.changes("gen0.dump", {"teacher": "abc", "views": 4, "top_k": 5}) == ["top_k None -> 5"]
