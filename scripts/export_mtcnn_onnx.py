"""Export facenet-pytorch's MTCNN P-, R- and O-nets to ONNX for poi_cli.data.mtcnn.OnnxMTCNN.

The weights are the ones inside the installed facenet-pytorch wheel
(facenet_pytorch/data/{pnet,rnet,onet}.pt); nothing is downloaded. Each net is exported as
facenet-pytorch defines it (same layers, same outputs: box regression, [landmarks,]
softmax face probability) with a free batch axis, and the P-net also with free height and
width (it runs on every level of the image pyramid); one change: each PReLU is written as
relu(x) * (1 - a) + x * a, the same function, because ONNX Runtime's PRelu kernel (a slope
per channel) is some 20x slower than Relu, Mul and Add on these shapes (with it the nets
spent a third of their time in PReLU; without it they run 1.5-1.8x faster). Each file is
checked against facenet-pytorch's own net on random input and written atomically (temp
file, then os.replace), so the script can be re-run at any time; the same torch and
facenet-pytorch give the same files.

The facenet-pytorch version and the sha256 of each source .pt are stored in each ONNX
file's metadata; the sha256 of each written file, with its origin and licence, goes into
data_manifests/weights.json (other entries of that file are kept).

    python scripts/export_mtcnn_onnx.py
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
from torch import nn

from poi_cli.core.atomic import atomic_write, write_json

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "poi_cli" / "weights" / "mtcnn"
MANIFEST = ROOT / "data_manifests" / "weights.json"
OPSET = 17
# Agreement required between torch and ONNX Runtime (float32; the nets' outputs are
# probabilities and box offsets of order 1).
TOLERANCE = 1e-4

# name -> (module class, output names, example input shape, extra dynamic input axes)
NETS = {
    "pnet": (PNet, ["regression", "probability"], (2, 3, 61, 83), {2: "height", 3: "width"}),
    "rnet": (RNet, ["regression", "probability"], (5, 3, 24, 24), {}),
    "onet": (ONet, ["regression", "landmarks", "probability"], (5, 3, 48, 48), {}),
}

LICENCE = (
    "MIT. facenet-pytorch 2.6.0: MIT, Copyright (c) 2019 Timothy Esler (LICENSE.md of the installed "
    "facenet_pytorch-2.6.0.dist-info). Upstream: the MTCNN of Kaipeng Zhang et al. is MIT, Copyright (c) 2016 "
    "Kaipeng Zhang (LICENSE of github.com/kpzhang93/MTCNN_face_detection_alignment); David Sandberg's TensorFlow "
    "port is MIT, Copyright (c) 2016 David Sandberg (header of src/align/detect_face.py in "
    "github.com/davidsandberg/facenet)"
)
SOURCE = (
    "facenet-pytorch {version} (https://github.com/timesler/facenet-pytorch), facenet_pytorch/data/{name}.pt "
    "(sha256 {sha}), which facenet-pytorch's models/utils/tensorflow2pytorch.py converted from the det1/det2/det3 "
    "weights of David Sandberg's TensorFlow MTCNN (github.com/davidsandberg/facenet, src/align/detect_face.py: "
    "'Tensorflow implementation of the face detection / alignment algorithm found at "
    "https://github.com/kpzhang93/MTCNN_face_detection_alignment'), the MTCNN of K. Zhang, Z. Zhang, Z. Li and "
    "Y. Qiao, 'Joint Face Detection and Alignment Using Multitask Cascaded Convolutional Networks', IEEE Signal "
    "Processing Letters, 2016"
)
NOTES = (
    "Verified: facenet-pytorch's LICENSE.md in the installed wheel; the two upstream licence texts and the "
    "conversion script were read in public snapshots of those repositories (the wheel ships only facenet-pytorch's "
    "LICENSE.md). "
    "The nets are facenet-pytorch's PNet/RNet/ONet with each PReLU written as relu(x) * (1 - a) + x * a (the same "
    "function, faster in ONNX Runtime); opset 17, batch axis free (pnet also height and width); input float32 NCHW "
    "RGB, (pixel - 127.5) / 128. Used by poi_cli/data/mtcnn.py."
)


class SplitPReLU(nn.Module):
    """PReLU(x) = max(0, x) + a * min(0, x), computed as relu(x) * (1 - a) + x * a (see the module docstring)."""

    def __init__(self, prelu: nn.PReLU) -> None:
        super().__init__()
        self.register_buffer("slope", prelu.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slope = self.slope.reshape(-1, *([1] * (x.dim() - 2)))  # per channel: dim 1 of (N, C, ...) or (N, C)
        return torch.relu(x) * (1 - slope) + x * slope


def with_split_prelu(net: nn.Module) -> nn.Module:
    """A copy of `net` with every PReLU replaced by SplitPReLU."""
    twin = copy.deepcopy(net)
    for name, module in list(twin.named_children()):
        if isinstance(module, nn.PReLU):
            setattr(twin, name, SplitPReLU(module))
    return twin


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_weights(name: str) -> Path:
    """The .pt file of one net inside the installed facenet-pytorch wheel."""
    import facenet_pytorch

    return Path(facenet_pytorch.__file__).parent / "data" / f"{name}.pt"


def onnx_model(net: torch.nn.Module, example: torch.Tensor, outputs: list[str], spatial: dict[int, str],
               meta: dict[str, str]) -> bytes:
    """The net as serialised ONNX (batch axis free, plus `spatial` input axes), with `meta` as metadata."""
    dynamic = {"input": {0: "batch", **spatial}, **{name: {0: "batch"} for name in outputs}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter, as poi export uses (no onnxscript)
        torch.onnx.export(net, (example,), buffer, dynamo=False, input_names=["input"], output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def max_abs_diff(net: torch.nn.Module, model: bytes, shape: tuple[int, ...]) -> float:
    """Largest |facenet-pytorch's net - ONNX Runtime| over all outputs, on random pixels of `shape`
    (normalised as MTCNN does)."""
    x = ((torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255 - 127.5) * 0.0078125)
    with torch.no_grad():
        expected = [y.numpy() for y in net(x)]
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})
    return max(float(np.abs(a - b).max()) for a, b in zip(expected, got))


def export(name: str, version: str) -> dict[str, str]:
    """Export, check and write one net; returns its weights.json entry."""
    cls, outputs, shape, spatial = NETS[name]
    source = source_weights(name)
    source_sha = sha256(source)
    net = cls(pretrained=True).eval()
    meta = {"source": f"facenet-pytorch {version} facenet_pytorch/data/{name}.pt", "source_sha256": source_sha,
            "made_by": "scripts/export_mtcnn_onnx.py"}
    model = onnx_model(with_split_prelu(net), torch.zeros(shape), outputs, spatial, meta)
    # Check the exported shape and others: a second batch size, and for the P-net another image size.
    checks = [shape, (1, 3, 12, 12) if spatial else (1, *shape[1:]), (3, 3, 100, 57) if spatial else (17, *shape[1:])]
    diff = max(max_abs_diff(net, model, s) for s in checks)
    if diff > TOLERANCE:
        raise SystemExit(f"{name}: ONNX Runtime differs from torch by {diff:.2e} (limit {TOLERANCE:.0e}); nothing written")
    path = OUT_DIR / f"{name}.onnx"
    atomic_write(path, lambda f: f.write(model))
    written_sha = sha256(path)
    print(f"{name}: {source} (sha256 {source_sha}) -> {path.relative_to(ROOT)} ({path.stat().st_size} bytes, "
          f"sha256 {written_sha}); max |torch - onnxruntime| = {diff:.2e}")
    return {"sha256": written_sha, "made_by": "scripts/export_mtcnn_onnx.py",
            "source": SOURCE.format(version=version, name=name, sha=source_sha), "licence": LICENCE, "notes": NOTES}


def update_manifest(entries: dict[str, dict[str, str]]) -> None:
    """Write the MTCNN entries into data_manifests/weights.json, keeping every other entry."""
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    files = manifest.setdefault("files", {})
    files.update(entries)
    manifest["files"] = dict(sorted(files.items()))
    write_json(MANIFEST, manifest)
    print(f"updated {MANIFEST.relative_to(ROOT)}")


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    version = metadata.version("facenet-pytorch")
    print(f"facenet-pytorch {version}, torch {torch.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, opset {OPSET}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    update_manifest({f"mtcnn/{name}.onnx": export(name, version) for name in NETS})


if __name__ == "__main__":
    main()
