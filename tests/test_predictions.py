"""The one inference path (model.predictions) and the shared metrics (core.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_prepared, tiny_model
from poi_cli.core.metrics import average_ranks, confusion_matrix, per_class_recall, roc_auc
from poi_cli.data.preprocess import to_model_input
from poi_cli.data.store import PreparedDataset
from poi_cli.model.checkpoint import load_checkpoint, load_model
from poi_cli.model.network import POIModel
from poi_cli.model.predictions import SplitPredictions, predict_checkpoint_split, predict_split


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    dataset = PreparedDataset(make_prepared(tmp_path_factory.mktemp("predictions") / "data", splits={"test": 2}))
    return dataset, dataset.split("test")  # 14 images, 2 per class


def direct(model: POIModel, dataset: PreparedDataset, store_rows: np.ndarray):
    with torch.no_grad():
        return model.eval()(to_model_input(torch.from_numpy(np.asarray(dataset.faces[store_rows])), 64))


def test_predict_split_gives_the_models_own_outputs(test_split):
    dataset, data = test_split
    model = tiny_model(arch="resnet10").train()
    predictions = predict_split(model, dataset.faces, data.store_rows, data.labels, 64, 5, torch.device("cpu"))
    assert model.training  # the caller's mode is restored
    out = direct(model, dataset, data.store_rows)
    close = dict(rtol=1e-4, atol=1e-5)  # batches of 5 vs 14: the same up to float rounding
    assert predictions.trn_logits.dtype == np.float32 and predictions.trn_logits.shape == (14, 7)
    np.testing.assert_allclose(predictions.trn_logits, out.trn_logits.numpy(), **close)
    np.testing.assert_allclose(predictions.region_logits, out.region_logits.numpy(), **close)
    np.testing.assert_allclose(predictions.gate_weights, out.gate_weights.numpy(), **close)
    np.testing.assert_allclose(predictions.consistency, out.consistency.numpy(), **close)
    np.testing.assert_allclose(predictions.trn_probs, out.trn_probs.numpy(), **close)
    np.testing.assert_allclose(predictions.intermediate_probs(), out.intermediate_probs.numpy(), **close)
    np.testing.assert_allclose(predictions.region_probs(), out.region_probs.numpy(), **close)
    np.testing.assert_allclose(predictions.region_average(), out.region_probs.mean(1).numpy(), **close)
    np.testing.assert_allclose(predictions.eye_au_probs, out.eye_au_probs.numpy(), **close)
    np.testing.assert_allclose(predictions.mouth_au_probs, out.mouth_au_probs.numpy(), **close)
    assert predictions.labels.dtype == np.int64 and predictions.labels.tolist() == data.labels.tolist()
    assert predictions.positions.tolist() == list(range(14)) and len(predictions) == 14
    assert predictions.temperature == model.config.temperature
    assert predictions.accuracy == pytest.approx(float((out.trn_logits.argmax(1).numpy() == data.labels).mean()))


def test_trn_only_baseline_and_shards(test_split):
    dataset, data = test_split
    model = tiny_model(arch="resnet10")
    trn_only = predict_split(model, dataset.faces, data.store_rows, data.labels, 64, 4, torch.device("cpu"), with_pin=False)
    assert trn_only.region_logits is None and trn_only.consistency is None and trn_only.intermediate_probs() is None
    baseline = predict_split(tiny_model(use_pin=False, arch="resnet10"), dataset.faces, data.store_rows, data.labels, 64, 4,
                             torch.device("cpu"))
    assert baseline.region_logits is None and baseline.gate_weights is None and baseline.region_average() is None
    full = predict_split(model, dataset.faces, data.store_rows, data.labels, 64, 4, torch.device("cpu"))
    assert full.trn_logits.shape == trn_only.trn_logits.shape
    # Under torchrun each process takes positions rank::world_size of every global batch: together, all once.
    shards = [predict_split(model, dataset.faces, data.store_rows, data.labels, 64, 3, torch.device("cpu"), rank=rank,
                            world_size=2, with_pin=False) for rank in (0, 1)]
    positions = np.concatenate([s.positions for s in shards])
    assert sorted(positions.tolist()) == list(range(14))
    logits = np.concatenate([s.trn_logits for s in shards])[np.argsort(positions)]
    np.testing.assert_allclose(logits, full.trn_logits, rtol=1e-4, atol=1e-5)
    assert sum(int(s.correct.sum()) for s in shards) == int(full.correct.sum())


def test_predict_checkpoint_split_is_predict_split_of_the_checkpoints_model(test_split, tiny_checkpoint):
    dataset, data = test_split
    checkpoint = load_checkpoint(tiny_checkpoint)
    predictions = predict_checkpoint_split(checkpoint, dataset.faces, data.store_rows, data.labels, "cpu", 5, "off")
    model, _ = load_model(tiny_checkpoint)
    expected = predict_split(model, dataset.faces, data.store_rows, data.labels, 64, 5, torch.device("cpu"))
    for name in ("trn_logits", "labels", "positions", "region_logits", "gate_weights", "consistency"):
        np.testing.assert_array_equal(getattr(predictions, name), getattr(expected, name), err_msg=name)
    trn_only = predict_checkpoint_split(checkpoint, dataset.faces, data.store_rows, data.labels, "cpu", 5, "off",
                                        with_pin=False)
    assert trn_only.region_logits is None
    np.testing.assert_array_equal(trn_only.trn_logits, expected.trn_logits)


def test_derived_probabilities_by_hand():
    # Two images, two classes; region n of image 0 says class 0 (n < 2) or class 1, image 1 is uniform.
    region_logits = np.log(np.array([[[3, 1], [3, 1], [1, 3], [1, 3]], [[1, 1]] * 4], dtype=np.float32))
    gate = np.array([[0.5, 0.0, 0.5, 0.0], [0.25] * 4], dtype=np.float32)
    predictions = SplitPredictions(
        trn_logits=np.array([[2.0, 0.0], [0.0, 1.0]], np.float32), labels=np.array([0, 0]),
        region_logits=region_logits, gate_weights=gate, temperature=3.0,
    )
    assert predictions.predicted.tolist() == [0, 1] and predictions.correct.tolist() == [True, False]
    assert predictions.accuracy == 0.5
    np.testing.assert_allclose(predictions.trn_probs[0], [np.exp(2) / (np.exp(2) + 1), 1 / (np.exp(2) + 1)], rtol=1e-6)
    # T = 1: region probabilities 3/4, 1/4 and the reverse; the gate mixes them half and half.
    np.testing.assert_allclose(predictions.intermediate_probs(1.0), [[0.5, 0.5], [0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(predictions.region_probs(1.0)[0, 0], [0.75, 0.25], rtol=1e-6)
    # T = 3 (the model's): softmax(log(3)/3, 0) = 3^(1/3) / (3^(1/3) + 1)
    p = 3 ** (1 / 3) / (3 ** (1 / 3) + 1)
    np.testing.assert_allclose(predictions.region_probs()[0, 0], [p, 1 - p], rtol=1e-6)
    np.testing.assert_allclose(predictions.region_average(), [[0.5, 0.5], [0.5, 0.5]], rtol=1e-6)


def test_confusion_matrix_and_recall_by_hand():
    confusion = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 4)
    assert confusion.dtype == np.int64
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert per_class_recall(confusion) == [0.5, 1.0, pytest.approx(2 / 3), None]


def test_roc_auc_by_hand():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([0, 0, 1, 1])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5  # a tie counts half
    # ranks 1, 2.5, 2.5, 4: positives at 2.5 and 4 -> (6.5 - 3) / 4
    assert roc_auc(np.array([0.1, 0.3, 0.3, 0.7]), np.array([False, True, False, True])) == 0.875
    assert roc_auc(np.array([0.1, 0.2]), np.array([0, 0])) is None
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert average_ranks(np.array([])).tolist() == []
