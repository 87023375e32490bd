"""Loading a pretrained backbone from a file (torchvision and SCN/RUL/EAC layouts)."""

import pytest
import torch
import torchvision

from poi_cli.model.network import ModelConfig, POIModel
from poi_cli.model.pretrained import PretrainedError, load_backbone


def fresh_model(arch: str = "resnet18") -> POIModel:
    return POIModel(ModelConfig(arch=arch, input_size=64))


def source_resnet(arch: str = "resnet18", num_classes: int = 1000) -> torchvision.models.ResNet:
    torch.manual_seed(123)
    resnet = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    with torch.no_grad():  # make BN statistics distinguishable from a fresh init
        resnet.bn1.running_mean.uniform_(-1, 1)
    return resnet


def test_torchvision_state_dict_loads(tmp_path):
    resnet = source_resnet()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    model = fresh_model()
    fc_before = model.trn.fc.weight.clone()
    load_backbone(model, path)
    assert torch.equal(model.trunk.conv1.weight, resnet.conv1.weight)
    assert torch.equal(model.trunk.bn1.running_mean, resnet.bn1.running_mean)
    assert torch.equal(model.trn.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert torch.equal(model.trn.fc.weight, fc_before)  # the 1000-class head is not ours


def test_face_recognition_layout_loads(tmp_path):
    # resnet18_msceleb.pth as SCN/RUL/EAC use it: {'state_dict': {'module.<key>': ...}}
    # with an identity-classification head (and sometimes a 'feature' layer).
    resnet = source_resnet(num_classes=12666)
    state = {f"module.{k}": v for k, v in resnet.state_dict().items()}
    state["module.feature.weight"] = torch.randn(512, 512)
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": state, "epoch": 30}, path)
    model = fresh_model()
    result = load_backbone(model, path)
    assert torch.equal(model.trunk.layer2[0].conv1.weight, resnet.layer2[0].conv1.weight)
    assert "module.fc.weight" in result["dropped"] and "module.feature.weight" in result["dropped"]


def test_wrong_architecture_names_the_keys(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(source_resnet("resnet50").state_dict(), path)
    with pytest.raises(PretrainedError) as error:
        load_backbone(fresh_model("resnet18"), path)
    message = str(error.value)
    assert "does not fit a resnet18 backbone" in message
    assert "unexpected (layer1.0.bn3" in message and "wrong shape (layer1.0.conv1.weight" in message
    assert "\n" not in message


def test_unreadable_and_missing_files_fail_clearly(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(PretrainedError, match="cannot read"):
        load_backbone(fresh_model(), garbage)
    with pytest.raises(PretrainedError, match="not found"):
        load_backbone(fresh_model(), tmp_path / "absent.pth")
    no_weights = tmp_path / "no_weights.pth"
    torch.save({"epoch": 3, "note": "nothing"}, no_weights)
    with pytest.raises(PretrainedError, match="no state dict"):
        load_backbone(fresh_model(), no_weights)
