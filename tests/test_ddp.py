"""Multi-process training through torchrun: 2 CPU processes, gloo backend."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pandas as pd
import torch

from conftest import make_prepared

WORKER = textwrap.dedent('''
    import os, sys
    import torch
    from rich.console import Console
    from poi_cli.train.config import TrainConfig
    from poi_cli.train.engine import Trainer

    data, project, out = sys.argv[1:4]
    config = TrainConfig(data=data, project=project, input_size=64, epochs=1, batch=6, lr=0.01, amp="off", device="cpu")
    trainer = Trainer(config, console=Console(quiet=True))
    assert trainer.ctx.world_size == 2 and torch.distributed.get_backend() == "gloo"
    trainer.fit()
    torch.save(trainer.model.state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
''')


def test_two_gloo_processes_hold_identical_weights(tmp_path):
    data = make_prepared(tmp_path / "data", splits={"train": 2, "valid": 1})  # 14 images: 2 steps of 6, 3 per process
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    project = tmp_path / "runs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(script), str(data), str(project), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    initial = torch.load(project / "exp" / "last.pt", weights_only=True)["model"]
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key  # gradients were averaged, buffers broadcast
    fresh = _fresh_state()  # the seed's initialisation: the processes really trained away from it
    assert any(not torch.equal(ranks[0][k], v) for k, v in fresh.items() if k.endswith("weight"))
    for key, value in initial.items():
        assert torch.equal(value, ranks[0][key])  # rank 0 saved what it held
    assert [p.name for p in project.iterdir()] == ["exp"]  # only rank 0 made a run folder
    assert pd.read_csv(project / "exp" / "results.csv")["epoch"].tolist() == [1]


def _fresh_state() -> dict:
    from poi_cli.model.network import ModelConfig, POIModel

    torch.manual_seed(0)
    return POIModel(ModelConfig(input_size=64)).state_dict()
