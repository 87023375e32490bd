"""The GPU cases of the suite (marked `gpu`): bf16 autocast, channels_last, --compile, a
one-process NCCL DistributedDataParallel step and resume after a kill, on CUDA.

Without a CUDA GPU they skip. `POI_TEST_DEVICE=cpu` runs the same cases on the CPU (gloo
instead of NCCL; --compile left out: inductor's C++ build takes minutes on a small CPU), so
that their code has run before a GPU ever appears: `scripts/gpu_pack.sh --dry-run` does
that, and on a lent GPU `scripts/gpu_pack.sh` runs them on CUDA (`pytest -m gpu`).
"""

from __future__ import annotations

import io
import os

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from rich.console import Console
from typer.testing import CliRunner

from conftest import TINY_SPLITS, first_batch, make_prepared, tiny_config, train_until_killed
from poi_cli.cli import app
from poi_cli.model.checkpoint import load_checkpoint, load_model
from poi_cli.train.config import TrainConfig
from poi_cli.train.engine import Trainer, train

DEVICE = os.environ.get("POI_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE == "cuda"
ARCH = "resnet10"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="no CUDA GPU (POI_TEST_DEVICE=cpu runs these on the CPU)"),
]

# CUDA convolutions pick their algorithms per call and some backward kernels add with atomics:
# two runs of the same steps agree to float rounding, not bit for bit
TOLERANCE = dict(rtol=1e-3, atol=1e-4) if ON_CUDA else dict(rtol=1e-4, atol=1e-5)


def quiet() -> Console:
    return Console(file=io.StringIO())


def gpu_config(data, project, **overrides) -> TrainConfig:
    """tiny_config on DEVICE with the smallest backbone (these cases test the device paths, not the model)."""
    return tiny_config(data, project, **{"device": DEVICE, "arch": ARCH, **overrides})


def trainer_of(data, project, **overrides) -> Trainer:
    return Trainer(gpu_config(data, project, **overrides), console=quiet())


@pytest.fixture
def data(tmp_path):
    return make_prepared(tmp_path / "data", splits=TINY_SPLITS)


def test_device_is_the_one_asked_for(data, tmp_path):
    trainer = trainer_of(data, tmp_path / "runs")
    assert trainer.ctx.device.type == DEVICE
    assert next(trainer.model.parameters()).device.type == DEVICE
    # auto: channels_last on CUDA only
    assert trainer.channels_last is ON_CUDA


def test_bf16_autocast_training_step(data, tmp_path):
    bf16 = trainer_of(data, tmp_path / "runs", amp="bf16", name="bf16")
    fp32 = trainer_of(data, tmp_path / "runs", amp="off", name="fp32")
    assert bf16.amp and not fp32.amp
    dtypes = []
    conv = next(m for m in bf16.model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    x, labels = first_batch(bf16)
    before = [p.detach().clone() for p in bf16.model.parameters()]
    output, terms = bf16.train_step(x, labels, lr=0.01)
    hook.remove()
    assert dtypes == [torch.bfloat16]  # the convolutions ran in bf16 under autocast
    assert output.trn_logits.dtype == torch.float32  # losses are computed on float32 outputs
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # the weights stay float32
    assert all(torch.isfinite(t).all() for t in terms.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, bf16.model.parameters()))
    # the same first step in float32 (same seed: same weights, same batch): bf16 is a rounding, not another model
    _, reference = fp32.train_step(x, labels, lr=0.01)
    for name, value in reference.items():
        assert float(terms[name]) == pytest.approx(float(value), rel=0.05, abs=0.02), name


def test_channels_last_matches_contiguous(data, tmp_path):
    last = trainer_of(data, tmp_path / "runs", amp="off", channels_last="on", name="last")
    plain = trainer_of(data, tmp_path / "runs", amp="off", channels_last="off", name="plain")
    conv = next(m for m in last.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x, labels = first_batch(last)
    assert x.is_contiguous(memory_format=torch.channels_last)
    y, _ = first_batch(plain)
    assert y.is_contiguous() and torch.equal(x.contiguous(), y)  # the same input, another memory layout
    out_last, terms_last = last.train_step(x, labels, lr=0.01)
    out_plain, terms_plain = plain.train_step(y, labels, lr=0.01)
    torch.testing.assert_close(out_last.trn_logits, out_plain.trn_logits, rtol=1e-2, atol=1e-2)
    for name, value in terms_plain.items():
        assert float(terms_last[name]) == pytest.approx(float(value), rel=1e-2, abs=1e-3), name


@pytest.mark.skipif(not ON_CUDA and os.environ.get("POI_TEST_COMPILE") != "1",
                    reason="--compile on the CPU builds C++ kernels for minutes (POI_TEST_COMPILE=1 runs it)")
def test_compile_trains_and_saves_the_plain_module(data, tmp_path):
    torch._dynamo.reset()
    # two full batches of 7 (the loader drops a partial one): one shape, one compilation
    compiled = train(gpu_config(data, tmp_path / "runs", amp="off", epochs=1, compile=True, name="compiled"), quiet())
    eager = train(gpu_config(data, tmp_path / "runs", amp="off", epochs=1, name="eager"), quiet())
    first, reference = pd.read_csv(compiled / "results.csv").iloc[0], pd.read_csv(eager / "results.csv").iloc[0]
    assert first["loss_total"] == pytest.approx(reference["loss_total"], rel=2e-2)
    checkpoint = load_checkpoint(compiled / "last.pt")
    assert not any(key.startswith("_orig_mod") for key in checkpoint["model"])  # the plain module was saved
    model, _ = load_model(compiled / "last.pt")  # and loads as any checkpoint
    assert sum(p.numel() for p in model.parameters()) > 0


def test_one_process_ddp_step_matches_the_plain_step(data, tmp_path, monkeypatch):
    """torch.distributed with world size 1 (NCCL on CUDA, gloo on the CPU): DistributedDataParallel
    around the engine's model takes the same two steps as the plain model (the second step
    fails under DDP if a parameter goes unused), and the end-of-epoch buffer average works.

    Exact cuDNN arithmetic (no TF32, deterministic algorithms): with TF32 convolutions two plain
    models taking the same two steps already differ by 2.6e-4 in trunk.conv1.weight on an H200
    (the GPU pack of 2026-12-04; DDP's own difference was of that size), and without them plain
    and DDP agree to the bit there, so the comparison can be tight."""
    from torch.nn.parallel import DistributedDataParallel

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    plain = trainer_of(data, tmp_path / "runs", amp="off", channels_last="off", name="plain")
    wrapped = trainer_of(data, tmp_path / "runs", amp="off", channels_last="off", name="ddp")
    device = wrapped.ctx.device
    if ON_CUDA:
        torch.cuda.set_device(device)
    backend = "nccl" if ON_CUDA else "gloo"
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert dist.get_backend() == backend and dist.get_world_size() == 1
        wrapped.forward = DistributedDataParallel(wrapped.model, device_ids=[device.index] if ON_CUDA else None)
        x, labels = first_batch(plain)
        for step in range(2):
            _, terms_plain = plain.train_step(x, labels, lr=0.01)
            _, terms_ddp = wrapped.train_step(x, labels, lr=0.01)
            assert float(terms_ddp["ce_tar"]) == pytest.approx(float(terms_plain["ce_tar"]), rel=1e-6), step
        for (name, a), b in zip(plain.model.named_parameters(), wrapped.model.parameters()):
            torch.testing.assert_close(b, a, msg=lambda message, name=name: f"{name}: {message}")
        buffers = [b.clone() for b in wrapped.model.buffers() if b.is_floating_point()]
        wrapped._average_buffers()  # an all_reduce over the group, divided by its size: 1
        for before, after in zip(buffers, (b for b in wrapped.model.buffers() if b.is_floating_point())):
            torch.testing.assert_close(after, before)
        if ON_CUDA:
            torch.cuda.synchronize(device)
    finally:
        dist.destroy_process_group()




def test_resume_after_kill_on_the_device_matches_uninterrupted(data, tmp_path):
    project = tmp_path / "runs"
    train_until_killed(data, project, DEVICE, ARCH)
    threads = torch.get_num_threads()
    run = project / "killed"
    assert pd.read_csv(run / "results.csv")["epoch"].tolist() == [1]
    killed = load_checkpoint(run / "last.pt")
    assert killed["epoch"] == 1 and killed["config"]["device"] == DEVICE
    if ON_CUDA:
        assert "cuda" in killed["rng"]  # the CUDA generator's state travels with the checkpoint

    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--device", DEVICE, "--threads", str(threads)])
    assert result.exit_code == 0, result.output
    assert "resuming at epoch 2/2" in result.output
    assert pd.read_csv(run / "results.csv")["epoch"].tolist() == [1, 2]

    reference = train(gpu_config(data, project, name="reference"), quiet())
    resumed_state = load_checkpoint(run / "last.pt")["model"]
    reference_state = load_checkpoint(reference / "last.pt")["model"]
    for key, value in reference_state.items():
        torch.testing.assert_close(resumed_state[key], value, **TOLERANCE, msg=key)
    resumed_rows, reference_rows = pd.read_csv(run / "results.csv"), pd.read_csv(reference / "results.csv")
    for column in ("loss_total", "train_acc", "val_acc"):
        assert resumed_rows[column].tolist() == pytest.approx(reference_rows[column].tolist(), rel=1e-3, abs=1e-3), column
