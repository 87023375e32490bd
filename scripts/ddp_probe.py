"""How far a one-process DistributedDataParallel step is from the plain step, and how far two
plain steps are from each other, under three cuDNN settings (TF32 on, off, off + deterministic).

    PYTHONPATH=. python scripts/ddp_probe.py      # CUDA where there is one, else the CPU (gloo)

On an H200 (2026-12-04, torch 2.11.0+cu130; docs/results/gpu_pack/README.md) with TF32
convolutions (PyTorch's default) two plain models already differed by 2.6e-4 in
trunk.conv1.weight after two steps, DDP by 3.0e-4; without TF32 both by at most 3e-8, and with
deterministic cuDNN by 0. tests/test_gpu.py's DDP case compares under the last setting.
"""
import io, shutil, sys, tempfile
from pathlib import Path
import torch, torch.distributed as dist
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY_SPLITS, first_batch, make_prepared, tiny_config
from poi_cli.train.engine import Trainer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
tmp = Path(tempfile.mkdtemp())
data = make_prepared(tmp / "data", splits=TINY_SPLITS)

def trainer(name):
    return Trainer(tiny_config(data, tmp / "runs", device=DEVICE, arch="resnet10", amp="off", channels_last="off", name=name),
                   console=Console(file=io.StringIO()))

def compare(tag, a, b, x, labels, steps=2):
    losses = []
    for step in range(steps):
        _, ta = a.train_step(x, labels, lr=0.01)
        _, tb = b.train_step(x, labels, lr=0.01)
        losses.append((float(ta["ce_tar"]), float(tb["ce_tar"])))
    worst = []
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        d = (p - q).abs()
        excess = (d - (1e-4 + 1e-3 * q.abs())).max().item()
        worst.append((excess, name, d.max().item(), p.abs().max().item()))
    worst.sort(reverse=True)
    print(f"{tag}: losses {losses}")
    for e, name, dmax, pmax in worst[:4]:
        print(f"   {name}: max|diff| {dmax:.3e}  max|w| {pmax:.3e}  over tolerance by {e:.3e}")
    n_over = sum(1 for w in worst if w[0] > 0)
    print(f"   parameters over rtol 1e-3 atol 1e-4: {n_over} of {len(worst)}")

for tf32, deterministic in ((True, False), (False, False), (False, True)):
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.deterministic = deterministic
    tf32 = f"{tf32},det={deterministic}"
    torch.manual_seed(0)
    p1, p2 = trainer(f"p1{tf32}"), trainer(f"p2{tf32}")
    x, labels = first_batch(p1)
    compare(f"tf32={tf32} plain vs plain", p1, p2, x, labels)
    plain, wrapped = trainer(f"pl{tf32}"), trainer(f"dd{tf32}")
    if DEVICE == "cuda":
        torch.cuda.set_device(wrapped.ctx.device)
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", init_method=f"file://{tmp / ('store' + str(tf32))}", rank=0, world_size=1)
    try:
        wrapped.forward = DistributedDataParallel(wrapped.model, device_ids=[wrapped.ctx.device.index] if DEVICE == "cuda" else None)
        compare(f"tf32={tf32} plain vs DDP", plain, wrapped, x, labels)
    finally:
        dist.destroy_process_group()
shutil.rmtree(tmp, ignore_errors=True)  # its store, runs and process-group files
