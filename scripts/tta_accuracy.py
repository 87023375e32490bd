"""Would more test-time views than the mirror buy accuracy? A model's TRN on a labelled split,
its softmax averaged over the face and its mirror (the shipped recipe's flip) and over shifted
(±3 px) and zoomed (1.08x) copies of both. An analysis for issue 25's FERPlus target; it
changes no model and ships nothing.

    python scripts/tta_accuracy.py PREPARED_DIR MODEL [--split val] [--threads 1]

Float32, the model's own classes (the split's must be the same), T = 1; prints aggregate
figures only.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from poi_cli.data.preprocess import to_model_input
from poi_cli.data.store import PreparedDataset
from poi_cli.model.checkpoint import CheckpointInfo, load_checkpoint, model_of, resolve_checkpoint

SHIFT = 3  # pixels, about the training's translation
ZOOM = 1.08


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def zoomed(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The centre of the face enlarged by `scale`, at the same size."""
    n = x.shape[-1]
    m = int(round(n * scale))
    y = F.interpolate(x, size=(m, m), mode="bilinear", align_corners=False)
    o = (m - n) // 2
    return y[..., o:o + n, o:o + n]


VIEWS = {
    "face": lambda x: x,
    f"shift +{SHIFT} x": lambda x: shifted(x, SHIFT, 0), f"shift -{SHIFT} x": lambda x: shifted(x, -SHIFT, 0),
    f"shift +{SHIFT} y": lambda x: shifted(x, 0, SHIFT), f"shift -{SHIFT} y": lambda x: shifted(x, 0, -SHIFT),
    f"zoom {ZOOM}": lambda x: zoomed(x, ZOOM),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared")
    parser.add_argument("model", help="a checkpoint (.pt) or a run folder (its best.pt)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = PreparedDataset(args.prepared)
    checkpoint = load_checkpoint(resolve_checkpoint(args.model))
    info = CheckpointInfo.of(checkpoint)
    if list(info.classes) != dataset.classes:
        parser.error(f"the model's classes {list(info.classes)} are not the split's {dataset.classes}")
    model = model_of(checkpoint, torch.device("cpu")).float().eval()
    data = dataset.split(args.split)
    labels = np.asarray(data.labels)
    probs: dict[str, list[torch.Tensor]] = {f"{name}{side}": [] for name in VIEWS for side in ("", ", mirror")}
    with torch.no_grad():
        for start in range(0, len(labels), 256):
            x = to_model_input(torch.from_numpy(dataset.faces[data.store_rows[start:start + 256]]), info.input_size)
            for name, view in VIEWS.items():
                v = view(x)
                probs[name].append(F.softmax(model(v, with_pin=False).trn_logits.float(), 1))
                probs[f"{name}, mirror"].append(F.softmax(model(v.flip(-1), with_pin=False).trn_logits.float(), 1))
    p = {name: torch.cat(chunks).numpy() for name, chunks in probs.items()}

    def accuracy(*names: str) -> float:
        return 100 * float((np.mean([p[n] for n in names], axis=0).argmax(1) == labels).mean())

    def row(label: str, *names: str) -> None:
        print(f"  {label:<46} {accuracy(*names):.2f}")

    print(f"{args.model} on {args.split} ({len(labels)} faces), TRN accuracy (%), the mean softmax of the views:")
    row("face alone", "face")
    row("face + mirror (the shipped flip, 2 views)", "face", "face, mirror")
    for name in list(VIEWS)[1:]:
        row(f"+ {name} and its mirror (4 views)", "face", "face, mirror", name, f"{name}, mirror")
    shifts = [n for n in p if not n.startswith("zoom")]
    row(f"the four shifts, face and mirror ({len(shifts)} views)", *shifts)
    row(f"every view ({len(p)} views)", *p)

if __name__ == "__main__":
    main()
