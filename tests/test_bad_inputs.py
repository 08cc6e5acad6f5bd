"""Every bad input a hostile new user tried: one line, the right exit status,
no traceback, nothing created.

Exit status 2: the command is wrong (a name, a value, a combination). Exit
status 1: the machine or a file on it is (data missing or corrupt, a cache or
output folder that cannot be written, no space, no such device). See
``kdutils/errors.py``.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdutils import results as kresults
from kdutils import train as ktrain
from kdutils.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = "--profile smoke --dataset digits --teacher resnet8 --student resnet8 "
TINY += "--epochs 1 --no-progress"

# (command line, exit status, words the one line must hold)
BAD_ARGUMENTS = [
    ("train --set T=abc", 2, ["T", "'abc'", "finite number"]),
    ("train --set T=nan", 2, ["T", "finite number"]),
    ("train --set T=inf", 2, ["T", "inf"]),
    ("train --set T=1e999", 2, ["T", "inf"]),
    ("train --set T=-1", 2, ["T", "-1"]),
    ("train --set T=", 2, ["T", "''"]),
    ("train --set T", 2, ["NAME=VALUE"]),
    ("train --set batch_size=abc", 2, ["batch_size", "'abc'", "integer"]),
    ("train --set batch_size=0", 2, ["batch_size", ">= 1"]),
    ("train --set epochs=1.5", 2, ["epochs", "--epochs"]),
    ("train --set seed=1", 2, ["seed", "--seed"]),
    ("train --set method=fitnet", 2, ["method", "--method"]),
    ("train --set train_subset=-5", 2, ["train_subset", "-5", ">= 1"]),
    ("train --set test_subset=0", 2, ["test_subset", "0"]),
    ("train --set lr=0", 2, ["lr", "> 0"]),
    ("train --set lr=-0.1", 2, ["lr", "-0.1"]),
    ("train --set momentum=1.5", 2, ["momentum", "[0, 1)"]),
    ("train --set weight_decay=nan", 2, ["weight_decay", "finite"]),
    ("train --set augment=maybe", 2, ["augment", "True or False"]),
    ("train --set milestones=[3,2]", 2, ["milestones", "increasing"]),
    ("train --set nosuch=1", 2, ["nosuch", "T"]),
    ("train --set teacher_seed=-3", 2, ["teacher_seed", "-3"]),
    ("train --seed -1", 2, ["seed", "-1"]),
    ("train --seed abc", 2, ["--seed", "abc"]),
    ("train --seed 99999999999", 2, ["seed", "99999999999"]),
    ("train --epochs 0", 2, ["epochs", "0"]),
    ("train --epochs 1.5", 2, ["--epochs", "1.5"]),
    ("train --method nosuch", 2, ["nosuch", "kd"]),
    ("train --profile fast", 2, ["fast", "smoke"]),
    ("train --dataset svhn", 2, ["svhn", "fashion-mnist"]),
    ("train --student resnet7", 2, ["resnet7", "resnet20"]),
    ("train --teacher resnet9", 2, ["resnet9", "resnet56"]),
    ("train --device tpu", 2, ["device", "'tpu'", "cpu"]),
    ("train --device cuda:x", 2, ["device", "cuda:x"]),
    ("train --amp fp8", 2, ["--amp", "fp8"]),
    ("train --resume --restart", 2, ["--restart", "--resume"]),
    ("train --bogus", 2, ["--bogus"]),
    ("bogus", 2, ["bogus"]),
    ("figures", 2, ["--out"]),
    ("reproduce --seeds -1", 2, ["seed", "-1"]),
    ("reproduce --seeds", 2, ["--seeds"]),
    ("reproduce --rows NoSuchRow", 2, ["NoSuchRow", "KD"]),
    ("reproduce --profile bogus", 2, ["bogus", "quick"]),
    ("reproduce --cpus-per-run 0", 2, ["--cpus-per-run"]),
    ("reproduce --gpus-per-run -1", 2, ["--gpus-per-run"]),
    ("reproduce --executor slurm", 2, ["slurm", "ray"]),
    ("reproduce --table 2", 2, ["--table", "2"]),
]
if not torch.cuda.is_available():
    BAD_ARGUMENTS += [
        ("train --device cuda", 1, ["cuda", "no CUDA GPU", "--device cpu"]),
        ("train --device cuda:3", 1, ["cuda:3", "no CUDA GPU"]),
        ("train --amp fp16 --device cpu", 2, ["fp16", "CUDA"]),
    ]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _call(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own usage errors
        return int(e.code)


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty current directory (reproduce writes under ./results by
    default), with training forbidden: a bad command must not get that far."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def no_training(*args, **kwargs):
        raise AssertionError("a model was trained before the input was checked")

    monkeypatch.setattr(ktrain, "fit", no_training)
    return tmp_path


@pytest.mark.parametrize(
    "line, status, words", BAD_ARGUMENTS, ids=[c[0] for c in BAD_ARGUMENTS]
)
def test_a_bad_argument_is_one_line_with_its_status_and_creates_nothing(
    line, status, words, workdir, capsys
):
    before = _tree(workdir)
    argv = line.split()
    if argv[0] == "train" and "--profile" not in argv:
        argv = ["train", *TINY.split(), *argv[1:]]  # the case's own options last
    assert _call(argv) == status
    err = _one_line(capsys.readouterr().err)
    for w in words:
        assert w in err, (w, err)
    assert _tree(workdir) == before  # no cache, no results folder, no run folder


# --- the machine and its files: exit status 1 ---------------------------------


def _runs_made(cache: Path) -> list[str]:
    runs = cache / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


def test_a_cache_under_a_file_is_one_line(workdir, monkeypatch, capsys):
    blocker = workdir / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("KD_CACHE_DIR", str(blocker / "cache"))
    assert _call(["train", *TINY.split()]) == 1
    err = _one_line(capsys.readouterr().err)
    assert str(blocker / "cache") in err and "KD_CACHE_DIR" in err


def test_a_cache_under_proc_is_one_line(workdir, monkeypatch, capsys):
    monkeypatch.setenv("KD_CACHE_DIR", "/proc/kdutils-cache")
    assert _call(["train", *TINY.split()]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "/proc/kdutils-cache" in err and "KD_CACHE_DIR" in err


def test_reproduce_into_an_unwritable_folder_is_one_line(workdir, capsys):
    assert _call(["reproduce", "--out", "/proc/kd-table", "--rows", "KD"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "/proc/kd-table" in err and "writable" in err


@pytest.mark.parametrize("spoil", ["truncated", "garbage", "wrong-keys"])
def test_corrupt_cifar_files_are_one_line_naming_the_file(
    spoil, workdir, monkeypatch, capsys
):
    import pickle

    batches = workdir / "data" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    entry = {"data": [[0] * 3072] * 4, "labels": [0, 1, 2, 3]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        raw = pickle.dumps(entry)
        if spoil == "truncated" and name == "data_batch_3":
            raw = raw[: len(raw) // 2]
        if spoil == "garbage" and name == "data_batch_3":
            raw = b"\x00garbage" * 50
        if spoil == "wrong-keys" and name == "data_batch_3":
            raw = pickle.dumps({"pixels": []})
        (batches / name).write_bytes(raw)
    monkeypatch.setenv("KD_DATA_DIR", str(workdir / "data"))
    code = _call(
        ["train", "--profile", "smoke", "--dataset", "cifar10", "--no-progress"]
    )
    assert code == 1
    err = _one_line(capsys.readouterr().err)
    assert "data_batch_3" in err and "corrupt" in err
    assert _runs_made(workdir / "kd-cache") == []


def test_a_truncated_fashion_mnist_file_is_one_line(workdir, monkeypatch, capsys):
    import gzip

    folder = workdir / "fmnist"
    folder.mkdir()
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        header = (
            b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") + b"\x00\x00\x00\x1c" * 2
        )
        (folder / f"{stem}.gz").write_bytes(gzip.compress(header + b"\x00" * 100))
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        header = b"\x00\x00\x08\x01" + (60000).to_bytes(4, "big")
        (folder / f"{stem}.gz").write_bytes(gzip.compress(header + b"\x00" * 60000))
    monkeypatch.setenv("KD_DATA_DIR", str(folder))
    assert _call(["train", "--profile", "smoke", "--no-progress"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "images-idx3-ubyte" in err and "corrupt" in err


def test_a_full_disk_is_one_line_and_leaves_no_run_folder(workdir, monkeypatch, capsys):
    monkeypatch.setattr(ktrain, "fit", lambda *a, **k: [{"test_acc": 0.5}])

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ktrain, "atomic_write_bytes", full)
    monkeypatch.setattr(kresults, "atomic_write_bytes", full)
    assert _call(["train", *TINY.split(), "--method", "ce"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "No space left" in err and "model.pt" in err and "KD_CACHE_DIR" in err
    assert _runs_made(workdir / "kd-cache") == []


# --- said, not silent -----------------------------------------------------------


def test_resume_with_nothing_to_resume_says_so(workdir, monkeypatch, capsys):
    monkeypatch.undo()  # training allowed here
    monkeypatch.setenv("KD_CACHE_DIR", str(workdir / "kd-cache"))
    args = ["train", *TINY.split(), "--method", "ce"]
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "[resume] nothing to resume: no partial run of ce-resnet8" in out
    assert main([*args, "--resume"]) == 0
    assert "is already finished; loading it" in capsys.readouterr().out


def test_a_teacher_smaller_than_its_student_is_warned_about(workdir, capsys):
    argv = TINY.replace("--teacher resnet8 --student resnet8", "").split()
    argv = ["train", *argv, "--teacher", "resnet8", "--student", "resnet20"]
    argv += ["--set", "T=-1"]  # stop before training; the warning comes first
    assert _call(argv) == 2
    err = capsys.readouterr().err
    assert "T" in err.splitlines()[-1]
    argv[-1] = "T=4"
    before = err
    assert "smaller" not in before  # values are checked before the warning
    with pytest.raises(AssertionError, match="trained"):
        main(argv)
    err = capsys.readouterr().err
    assert "warning: the teacher resnet8" in err and "smaller than the student" in err


# --- the real entry point, as a user types it -----------------------------------


@pytest.mark.parametrize(
    "line, status",
    [("train --set T=abc", 2), ("train --device tpu", 2), ("train --seed -1", 2)],
)
def test_python_m_kdutils_bad_input_has_no_traceback(line, status, tmp_path):
    env = {**os.environ, "KD_CACHE_DIR": str(tmp_path / "cache")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    proc = subprocess.run(
        [sys.executable, "-m", "kdutils", *line.split()],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == status
    _one_line(proc.stderr)
    assert not (tmp_path / "cache").exists()
