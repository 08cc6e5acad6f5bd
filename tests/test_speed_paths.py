"""The fast paths: data held on the device, mixed precision, channels_last, compile.

CPU tests check that the options are validated, keyed and recorded; the GPU
tests run where CUDA is available and are skipped elsewhere. No timings here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kdutils as kd
from kdutils import data as kdata
from kdutils import loop as kloop
from kdutils import runs as kruns
from kdutils import teachers as kteachers

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _digits(n=64):
    d = kdata.load("digits", train=True)
    return kdata.TensorData(d.images[:n], d.labels[:n], "digits")


# --- options: validation, key, provenance (CPU) --------------------------------


def test_amp_values_are_checked():
    with pytest.raises(ValueError, match="amp must be"):
        kloop.check_amp("fp8")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        kloop.check_amp("fp16", "cpu")
    kloop.check_amp(None, "cpu")
    kloop.check_amp("bf16", "cpu")


def test_run_refuses_bad_amp_and_compile_before_training(digits_config):
    cfg = digits_config(method="ce")
    with pytest.raises(ValueError, match="amp must be"):
        kd.run(cfg, amp="half", progress=False)
    with pytest.raises(ValueError, match="compile must be"):
        kd.run(cfg, compile="yes", progress=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        kd.run(cfg, amp="fp16", device="cpu", progress=False)
    assert not kruns.run_dir(cfg).exists()


def test_amp_enters_the_run_key_like_channels_last(digits_config):
    cfg = digits_config(method="ce")
    keys = {
        kruns.run_key(cfg),
        kruns.run_key(cfg, channels_last=False),
        kruns.run_key(cfg, amp="bf16"),
        kruns.run_key(cfg, amp="fp16"),
    }
    assert len(keys) == 4
    assert kruns.run_key(cfg, amp=None) == kruns.run_key(cfg)


def test_a_bf16_run_is_recorded_and_cached_apart(digits_config, capsys):
    cfg = digits_config(method="kd", epochs=1)
    plain = kd.run(cfg, progress=False)
    mixed = kd.run(cfg, amp="bf16", progress=False)
    assert plain.provenance["amp"] is None and mixed.provenance["amp"] == "bf16"
    assert plain.key != mixed.key and plain.path != mixed.path
    # Its teacher is a bf16 run too, trained once and then shared.
    assert mixed.teacher["key"] == kruns.run_key(kd.teacher_config(cfg), amp="bf16")
    for res in (plain, mixed):
        assert all(torch.isfinite(torch.tensor(h["train_ce"])) for h in res.history)
    capsys.readouterr()
    assert kd.run(cfg, amp="bf16", progress=False).from_cache


def test_compile_auto_leaves_short_runs_and_cached_teachers_alone(digits_config):
    # Without augmentation the teacher's logits are precomputed: nothing to compile;
    # with it, a run this short stays under COMPILE_MIN_STEPS.
    for augment in (False, True):
        res = kd.run(digits_config(method="kd", augment=augment), progress=False)
        assert res.provenance["compile_teacher"] == "no"


def test_a_failing_compile_falls_back_with_a_printed_line(monkeypatch, capsys):
    teacher = kd.create_model("resnet8", 10, 1)
    distiller = kd.build("kd", kd.create_model("resnet8", 10, 1), teacher)
    loader = kdata.Loader(_digits(), 16, augment=True)

    def broken(self, *args, **kwargs):
        self._compiled_call_impl = lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError("no compiler here")
        )

    monkeypatch.setattr(torch.nn.Module, "compile", broken)
    done = kteachers.compile_teacher(distiller, loader, True, 10**6)
    assert done.startswith("failed: RuntimeError: no compiler here")
    assert "running it uncompiled" in capsys.readouterr().out
    # The teacher works uncompiled afterwards.
    x = next(iter(loader))[0]
    assert distiller.teacher_outputs(x)["logits"].shape == (16, 10)


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="torch.compile on CPU needs a C compiler",
)
@pytest.mark.skipif(sys.platform != "linux", reason="inductor is tested on Linux")
def test_a_compiled_teacher_gives_the_eager_logits():
    torch.manual_seed(0)
    teacher = kd.create_model("resnet8", 10, 1).eval()
    distiller = kd.build("kd", kd.create_model("resnet8", 10, 1), teacher)
    data = _digits(40)
    loader = kdata.Loader(data, 16, shuffle=False)  # batches of 16, 16, 8
    x = next(iter(loader))[0]
    eager = distiller.teacher_outputs(x)["logits"]
    assert kteachers.compile_teacher(distiller, loader, True, 10**6) == "yes"
    torch.testing.assert_close(
        distiller.teacher_outputs(x)["logits"], eager, atol=1e-4, rtol=1e-4
    )


_COMPILE_CHILD = """
import torch
import kdutils as kd
from kdutils import data as kdata, teachers as kteachers
torch.manual_seed(0)
teacher = kd.create_model("resnet8", 10, 1).eval()
distiller = kd.build("kd", kd.create_model("resnet8", 10, 1), teacher)
d = kdata.load("digits", train=True)
loader = kdata.Loader(kdata.TensorData(d.images[:40], d.labels[:40], "digits"),
                      16, shuffle=False)
x = next(iter(loader))[0]
eager = distiller.teacher_outputs(x)["logits"]
assert kteachers.compile_teacher(distiller, loader, True, 10**6) == "yes"
torch.testing.assert_close(distiller.teacher_outputs(x)["logits"], eager,
                           atol=1e-4, rtol=1e-4)
import os; print("cache", os.environ["TORCHINDUCTOR_CACHE_DIR"])
"""


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="torch.compile on CPU needs a C compiler",
)
@pytest.mark.skipif(sys.platform != "linux", reason="inductor is tested on Linux")
def test_a_compile_cache_made_on_another_cpu_isa_is_never_served(tmp_path):
    # Compile once limited to AVX2, then with the CPU's own ISA, sharing one
    # default cache folder (as a persistent /tmp does when the CPU changes).
    # Before the per-ISA folders, the second run crashed (SIGSEGV) on an
    # AVX-512 CPU, and the reverse order gave wrong logits.
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["TMPDIR"] = str(tmp_path)
    folders = []
    for capability in ("avx2", None):
        child = dict(env)
        child.pop("ATEN_CPU_CAPABILITY", None)
        if capability:
            child["ATEN_CPU_CAPABILITY"] = capability
        done = subprocess.run(
            [sys.executable, "-c", _COMPILE_CHILD],
            env=child,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        folders.append(done.stdout.split("cache ")[-1].strip())
    assert all(Path(f).parent.parent == tmp_path for f in folders)
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    if "avx512" in str(pick_vec_isa()):
        assert folders[0] != folders[1]


# --- the loader: on-device data gives the batches the CPU gives ---------------


def test_loader_holds_one_copy_and_yields_cpu_indices():
    data = _digits()
    loader = kdata.Loader(data, 16, augment=True, seed=3)
    assert loader._images.data_ptr() == data.images.data_ptr()  # no copy on CPU
    for x, y, idx in loader:
        assert idx.device.type == "cpu" and y.device == x.device


@cuda
def test_gpu_loader_gives_the_cpu_batches_bit_for_bit():
    data = _digits()
    for augment in (False, True):
        cpu = kdata.Loader(data, 16, augment=augment, seed=5)
        gpu = kdata.Loader(data, 16, augment=augment, seed=5, device="cuda")
        assert gpu._images.device.type == "cuda"
        for epoch in (0, 1):
            cpu.set_epoch(epoch)
            gpu.set_epoch(epoch)
            for (xc, yc, ic), (xg, yg, ig) in zip(cpu, gpu, strict=True):
                assert torch.equal(ic, ig) and torch.equal(yc, yg.cpu())
                torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)


@cuda
def test_gpu_augmentation_matches_the_cpu_one():
    info = kdata.DATASETS["cifar10"]
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    a = kdata.augment_batch(images, info, torch.Generator().manual_seed(1))
    b = kdata.augment_batch(images.cuda(), info, torch.Generator().manual_seed(1))
    assert b.device.type == "cuda" and torch.equal(a, b.cpu())


# --- mixed precision and channels_last on the GPU ------------------------------


def _one_step(amp, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    distiller = kd.build(
        "kd", kd.create_model("resnet8", 10, 3), kd.create_model("resnet14", 10, 3)
    ).to("cuda", memory_format=fmt)
    cfg = kd.make_config(
        "smoke", method="kd", dataset="cifar10", epochs=1, batch_size=16
    )
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)
    data = kdata.TensorData(images, torch.randint(0, 10, (48,)), "cifar10")
    loader = kdata.Loader(
        data, 16, augment=True, device="cuda", channels_last=channels_last
    )
    x = next(iter(loader))[0]
    assert x.is_contiguous(memory_format=fmt)
    history = kloop.fit(distiller, loader, data, cfg, progress=False, amp=amp)
    return history[-1]


@cuda
@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_gpu_step_is_finite_in_every_precision_and_layout(amp, channels_last):
    rec = _one_step(amp, channels_last)
    assert all(torch.isfinite(torch.tensor(rec[k])) for k in ("train_ce", "train_kd"))
    assert 0.0 <= rec["test_acc"] <= 1.0


@cuda
def test_an_fp16_checkpoint_keeps_the_gradient_scaler(tmp_path):
    torch.manual_seed(0)
    distiller = kd.build("ce", kd.create_model("resnet8", 10, 1)).to("cuda")
    data = _digits()
    cfg = kd.make_config("smoke", method="ce", dataset="digits", epochs=1)
    loader = kdata.Loader(data, 16, device="cuda")
    ckpt = Path(tmp_path) / "checkpoint.pt"
    kloop.fit(distiller, loader, data, cfg, ckpt, key="k", progress=False, amp="fp16")
    assert "scaler" in kloop.load_checkpoint(ckpt, "k")
