"""Pretrained weights from local files: ResNet (torchvision layout) and transformer directories,
and which tensors travel between site and server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from common.errors import ConfigError
from common.models import (
    ModelKind,
    ModelSpec,
    build_model,
    exchanged_bytes,
    exchanged_keys,
    exchanged_state,
    load_exchanged,
)
from common.models.resnet import GroupNormResNet, load_pretrained
from common.models.transformer import LoraSpec, build_text_classifier, resolve_model_dir


def _torchvision_layout(model: GroupNormResNet, *, rgb: bool, classes: int) -> dict[str, torch.Tensor]:
    """A state dict as torchvision's resnet18 names it (bn*, running stats), random values."""
    state = {}
    for name, tensor in model.state_dict().items():
        tv_name = name.replace("gn1", "bn1").replace("gn2", "bn2")
        value = torch.randn_like(tensor)
        if name == "conv1.weight" and rgb:
            value = torch.randn(tensor.shape[0], 3, *tensor.shape[2:])
        if name.startswith("fc."):
            value = torch.randn(classes, *tensor.shape[1:]) if name == "fc.weight" else torch.randn(classes)
        state[tv_name] = value
        if tv_name.endswith(("bn1.weight", "bn2.weight", "downsample.1.weight")):
            prefix = tv_name.rsplit(".", 1)[0]
            state[f"{prefix}.running_mean"] = torch.zeros_like(tensor)
            state[f"{prefix}.running_var"] = torch.ones_like(tensor)
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(5)
    return state


def test_resnet_loads_torchvision_layout_weights(tmp_path: Path) -> None:
    model = GroupNormResNet(1, 3, width=8, image_size=224)
    source = _torchvision_layout(model, rgb=True, classes=1000)
    torch.save(source, tmp_path / "resnet18.pth")
    untouched = load_pretrained(model, tmp_path / "resnet18.pth")
    assert untouched == ["fc.bias", "fc.weight"]  # 1000 ImageNet classes: the head starts fresh
    state = model.state_dict()
    torch.testing.assert_close(state["layer2.0.gn1.weight"], source["layer2.0.bn1.weight"])
    torch.testing.assert_close(state["layer3.0.downsample.1.bias"], source["layer3.0.downsample.1.bias"])
    torch.testing.assert_close(state["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True))  # RGB -> gray


def test_resnet_pretrained_through_the_spec_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    reference = GroupNormResNet(3, 5, width=4, image_size=32)
    save_file(_torchvision_layout(reference, rgb=True, classes=5), str(tmp_path / "w.safetensors"))
    spec = ModelSpec(ModelKind.RESNET, (3, 32, 32), 5, width=4, pretrained_path=str(tmp_path / "w.safetensors"))
    a, b = build_model(spec, seed=0), build_model(spec, seed=1)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), f"{name} differs between seeds: it was not loaded"


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing", "no such file"),
        ("garbage", "cannot read"),
        ("width", "tensor 'conv1.weight' has shape (8, 3, 3, 3), the model needs (4, 3, 3, 3)"),
        ("unknown", "has tensor 'extra.weight', which a ResNet-18 does not have"),
    ],
)
def test_resnet_bad_weights_files_are_named(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / "w.pth"
    if setup == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif setup == "width":
        torch.save(_torchvision_layout(GroupNormResNet(3, 5, width=8, image_size=32), rgb=True, classes=5), path)
    elif setup == "unknown":
        torch.save({"extra.weight": torch.zeros(2)}, path)
    with pytest.raises(ConfigError, match="pretrained-path") as info:
        load_pretrained(GroupNormResNet(3, 5, width=4, image_size=32), path)
    assert message in str(info.value)


def test_transformer_loads_saved_weights_and_refuses_missing_ones(tiny_text_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    folder = tmp_path / "pretrained"
    shutil.copytree(tiny_text_model, folder)
    with pytest.raises(ConfigError, match="has no weights .* set random-init=true"):
        build_text_classifier(str(folder), 3, lora=None)
    torch.manual_seed(11)
    AutoModel.from_config(AutoConfig.from_pretrained(str(folder)), add_pooling_layer=False).save_pretrained(str(folder))
    saved = load_file(str(folder / "model.safetensors"))
    for lora in (None, LoraSpec(rank=2)):
        model = build_text_classifier(str(folder), 3, lora=lora)
        own = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in model.state_dict().items()}
        for name, value in saved.items():
            if not name.endswith("position_ids"):
                torch.testing.assert_close(own[f"encoder.{name}"], value, msg=name)


@pytest.mark.parametrize(
    "path, message",
    [
        ("/no/such/dir", "no such directory"),
        ("EMPTY", "has no config.json"),
    ],
)
def test_transformer_bad_directories_are_named(tmp_path: Path, path: str, message: str) -> None:
    if path == "EMPTY":
        path = str(tmp_path)
    with pytest.raises(ConfigError, match=message):
        resolve_model_dir(path)


def test_lora_target_that_does_not_exist_is_named(tiny_text_model: Path) -> None:
    with pytest.raises(ConfigError, match="no module named 'q_proj'"):
        build_text_classifier(str(tiny_text_model), 3, lora=LoraSpec(targets=("q_proj",)), random_init=True)


def test_lora_update_is_a_small_part_of_the_model_and_round_trips(tiny_text_model: Path) -> None:
    spec = ModelSpec(
        ModelKind.TRANSFORMER, (32,), 3, pretrained_path=str(tiny_text_model), random_init=True, lora=LoraSpec(rank=2)
    )
    site, server = build_model(spec, seed=0), build_model(spec, seed=0)
    full = sum(t.numel() * t.element_size() for t in site.state_dict().values())
    assert exchanged_bytes(site) < full / 5
    for p in site.parameters():
        if p.requires_grad:
            nn.init.normal_(p)
    load_exchanged(server, {k: v.numpy() for k, v in exchanged_state(site).items()})
    for key in exchanged_keys(site):
        assert torch.equal(server.state_dict()[key], site.state_dict()[key])
    with pytest.raises(ValueError, match="do not match"):
        load_exchanged(server, dict(site.state_dict()))  # the whole model is not what travels


def test_minilm_package_is_the_default(tmp_path: Path) -> None:
    """The optional extra (installed with the dev extra): MiniLM-L6 weights load offline."""
    folder = resolve_model_dir("")
    assert (folder / "model.safetensors").is_file() and resolve_model_dir("minilm") == folder
    model = build_text_classifier("minilm", 4, lora=LoraSpec())
    assert model.encoder.base_model.model.config.hidden_size == 384
