"""The run cache checks itself: every artifact is verified before it is used.

Each kind of file a run leaves (the record, the weights, the method's own
modules, weights kept after an epoch, a teacher's logits, a checkpoint, a
reproduction's per-run record) is corrupted here in turn; the next run must
say so in one line, move the bad file or folder to ``set-aside/`` and train
again, reaching the weights an undisturbed run reaches.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from training_stops import interrupt

import kdutils as kd
from kdutils import runs as kruns
from kdutils import train as ktrain
from kdutils.errors import CorruptArtifact
from kdutils.results import Result, set_aside, verify_file, write_checked


def _weights(res: Result, name: str = "model.pt") -> dict:
    return torch.load(Path(res.path) / name, weights_only=True)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _set_aside(cache: Path) -> list[str]:
    folder = cache / "set-aside"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _zero_tensor_file(path: Path) -> None:
    """Same shape, same dtype, all zeros: loads fine, but is not what was written."""
    t = torch.load(path, weights_only=True)
    if isinstance(t, dict):
        torch.save({k: torch.zeros_like(v) for k, v in t.items()}, path)
    else:
        torch.save(torch.zeros_like(t), path)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "kd-cache"


# --- the pieces ----------------------------------------------------------------


def test_write_checked_then_verify_catches_any_change(tmp_path):
    path = tmp_path / "a" / "x.pt"
    write_checked(path, b"0123456789")
    verify_file(path)
    path.write_bytes(b"0123456780")
    with pytest.raises(CorruptArtifact, match="not the file that was written"):
        verify_file(path)
    path.unlink()
    with pytest.raises(CorruptArtifact, match="missing"):
        verify_file(path)
    # A file with no checksum beside it predates checksums: trusted.
    (tmp_path / "old.pt").write_bytes(b"legacy")
    verify_file(tmp_path / "old.pt")


def test_set_aside_moves_never_deletes(tmp_path):
    run = tmp_path / "runs" / "kd-x-s0-abc"
    write_checked(run / "checkpoint.pt", b"data")
    moved = set_aside(run / "checkpoint.pt", tmp_path / "set-aside")
    assert moved.read_bytes() == b"data"
    assert moved.name.startswith("kd-x-s0-abc--checkpoint.pt.")
    assert sorted(os.listdir(tmp_path / "set-aside")) == sorted(
        [moved.name, moved.name.replace("checkpoint.pt.", "checkpoint.pt.sha256.")]
    )
    folder = set_aside(run, tmp_path / "set-aside")
    assert folder.is_dir() and not run.exists()


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_cache_files_follow_the_users_umask(digits_config, mask):
    old = os.umask(mask)
    try:
        res = kd.run(digits_config(method="ce", epochs=1), progress=False)
    finally:
        os.umask(old)
    for name in ("model.pt", "result.json"):
        mode = stat.S_IMODE((Path(res.path) / name).stat().st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))


# --- each artifact kind, corrupted --------------------------------------------


@pytest.mark.parametrize(
    "name, spoil",
    [
        ("model.pt", _truncate),
        ("model.pt", _zero_tensor_file),
        ("result.json", _truncate),
        ("result.json", lambda p: p.write_text(json.dumps({"name": "x"}))),
        ("result.json", lambda p: p.write_text('{"final": 3}')),
        ("model-e1.pt", _truncate),
    ],
    ids=[
        "model-truncated",
        "model-zeroed",
        "record-truncated",
        "record-wrong-fields",
        "record-wrong-types",
        "epoch-weights",
    ],
)
def test_a_spoiled_finished_run_is_set_aside_and_trained_again(
    digits_config, cache, capsys, name, spoil
):
    cfg = digits_config(method="ce", save_epochs=(1,))
    first = kd.run(cfg, progress=False)
    clean = _weights(first)
    spoil(Path(first.path) / name)
    capsys.readouterr()
    again = kd.run(cfg, progress=False)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("[corrupt]"))
    assert name in line and "set-aside" in line and "training it again" in line
    assert not again.from_cache and "[done]" in out
    _same(_weights(again), clean)  # the run is deterministic: same weights
    [moved] = _set_aside(cache)
    assert (cache / "set-aside" / moved / name).exists()  # kept, not deleted
    assert kd.run(cfg, progress=False).from_cache  # and now it is clean


def test_a_spoiled_distiller_state_is_noticed(digits_config, capsys):
    cfg = digits_config(method="dml")  # peers' weights go to distiller.pt
    res = kd.run(cfg, progress=False)
    assert "distiller.pt" in res.files
    _truncate(Path(res.path) / "distiller.pt")
    with pytest.raises(CorruptArtifact, match="distiller.pt"):
        ktrain.load_distiller(res)
    capsys.readouterr()
    assert not kd.run(cfg, progress=False).from_cache
    assert "[corrupt]" in capsys.readouterr().out


def test_a_record_from_before_checksums_is_checked_by_loading(digits_config, capsys):
    cfg = digits_config(method="ce", epochs=1)
    res = kd.run(cfg, progress=False)
    record = json.loads((Path(res.path) / "result.json").read_text())
    del record["files"]
    (Path(res.path) / "result.json").write_text(json.dumps(record))
    assert kd.run(cfg, progress=False).from_cache  # intact: still served
    _truncate(Path(res.path) / "model.pt")
    capsys.readouterr()
    assert not kd.run(cfg, progress=False).from_cache
    assert "model.pt cannot be read" in capsys.readouterr().out


def test_zeroed_teacher_logits_are_recomputed_not_used(digits_config, cache, capsys):
    cfg = digits_config(method="kd")
    clean = _weights(kd.run(cfg, progress=False))
    t_res = kruns.load_run(kruns.run_dir(kd.teacher_config(cfg)).name)
    logits = Path(t_res.path) / "train_logits.pt"
    _zero_tensor_file(logits)
    # The student is retrained (another cache folder, same teacher folder).
    student = kruns.run_dir(cfg)
    set_aside(student, cache / "elsewhere")
    capsys.readouterr()
    again = kd.run(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[corrupt]" in out and "train_logits.pt" in out
    assert "computing the logits again" in out
    _same(_weights(again), clean)
    assert any("--train_logits.pt." in n for n in _set_aside(cache))


def test_a_spoiled_teacher_is_trained_again_for_its_student(digits_config, capsys):
    cfg = digits_config(method="kd")
    clean = _weights(kd.run(cfg, progress=False))
    teacher = kruns.run_dir(kd.teacher_config(cfg))
    _truncate(teacher / "model.pt")
    set_aside(kruns.run_dir(cfg), teacher.parent.parent / "elsewhere")
    capsys.readouterr()
    again = kd.run(cfg, progress=False)
    out = capsys.readouterr().out
    assert out.count("[done]") == 2  # the teacher, then the student
    _same(_weights(again), clean)


def test_a_spoiled_checkpoint_is_set_aside_and_the_run_starts_over(
    digits_config, cache, monkeypatch, capsys
):
    cfg = digits_config(method="ce", epochs=3)
    with monkeypatch.context() as m:
        interrupt(m, epoch=1, after=1)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    ckpt = kruns.run_dir(cfg) / "checkpoint.pt"
    raw = ckpt.read_bytes()  # one bit flipped: torch may still load it
    ckpt.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    capsys.readouterr()
    res = kd.run(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[corrupt]" in out and "checkpoint.pt" in out and "from epoch 0" in out
    assert "[resume]" not in out
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert any("checkpoint.pt" in n for n in _set_aside(cache))
    monkeypatch.setenv("KD_CACHE_DIR", str(cache.parent / "fresh"))
    _same(_weights(res), _weights(kd.run(cfg, progress=False)))


def test_a_spoiled_reproduce_record_is_set_aside_and_run_again(tmp_path, capsys):
    from kdutils.reproduce import reproduce

    over = dict(dataset="digits", train_subset=300, test_subset=200, epochs=1)
    out = tmp_path / "table"
    reproduce("smoke", [0], out=out, rows=["ResNet20"], overrides=over)
    [record] = sorted((out / "runs").glob("*.json"))
    _truncate(record)
    capsys.readouterr()
    reproduce("smoke", [0], out=out, rows=["ResNet20"], overrides=over)
    printed = capsys.readouterr().out
    assert "[corrupt]" in printed and record.name in printed
    assert Result.load(record).final["test_acc"] is not None
    assert len(list((out / "set-aside").iterdir())) == 1


# --- --resume and --restart reach the teacher -----------------------------------


def _killed_in_teacher(cfg, monkeypatch) -> Path:
    with monkeypatch.context() as m:
        interrupt(m, epoch=1, after=1)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    ckpt = kruns.run_dir(kd.teacher_config(cfg)) / "checkpoint.pt"
    assert ckpt.exists()
    return ckpt


def test_restart_and_resume_apply_to_the_teacher_too(
    digits_config, monkeypatch, capsys
):
    cfg = digits_config(method="kd", epochs=3)
    ckpt = _killed_in_teacher(cfg, monkeypatch)
    with pytest.raises(ktrain.PartialRunExists, match="ce-resnet8"):
        kd.run(cfg, resume=False, progress=False)
    capsys.readouterr()
    res = kd.run(cfg, resume=False, restart=True, progress=False)
    out = capsys.readouterr().out
    assert "[restart] ce-resnet8" in out and "[resume]" not in out
    assert not ckpt.exists() and res.test_acc is not None


# --- a failed run, and two processes on one run ------------------------------------


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(
    digits_config, monkeypatch
):
    cfg = digits_config(method="ce")

    def broken(*args, **kwargs):
        raise RuntimeError("failed in epoch 1 (test)")

    monkeypatch.setattr(ktrain, "fit", broken)
    with pytest.raises(RuntimeError, match="epoch 1"):
        kd.run(cfg, progress=False)
    assert not kruns.run_dir(cfg).exists()


_SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    import kdutils as kd
    from kdutils import train as ktrain
    real_fit = ktrain.fit
    def slow_fit(*a, **k):
        print("fitting", flush=True)
        time.sleep(float(sys.argv[1]))
        return real_fit(*a, **k)
    ktrain.fit = slow_fit
    cfg = kd.make_config("smoke", method="ce", dataset="digits", epochs=1,
                         train_subset=300, test_subset=200, student="resnet8")
    res = kd.run(cfg, progress=False)
    print("acc", res.test_acc, flush=True)
    """
)


def test_a_second_process_waits_for_the_run_then_loads_it(tmp_path):
    env = {**os.environ, "KD_CACHE_DIR": str(tmp_path / "shared")}
    first = subprocess.Popen(
        # the first sleeps longer than the second takes to start (import
        # kdutils takes seconds), so the second finds the run's lock held
        [sys.executable, "-c", _SLOW_RUN, "12"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in first.stdout:  # the first holds the run's lock from here on
        if line.startswith("fitting"):
            break
    second = subprocess.run(
        [sys.executable, "-c", _SLOW_RUN, "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    rest = first.communicate(timeout=300)[0]
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-1500:]
    assert "[wait] ce-resnet8-digits-s0 is being trained by process" in second.stdout
    assert "[cache]" in second.stdout and "fitting" not in second.stdout
    acc = [x for x in rest.splitlines() if x.startswith("acc")]
    assert acc == [x for x in second.stdout.splitlines() if x.startswith("acc")]
