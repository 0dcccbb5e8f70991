"""common.models.clone: a copy of the job's model as independent as ``copy.deepcopy``'s, for
every family, and the generic deepcopy wherever a module holds anything the fast path does not
copy (so a template never shares a mutable object, a hook or a gradient with a site's copy)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from common.config import ModelKind
from common.models import ModelSpec, build_model
from common.models.clone import _clone, _NotPlain, clone

SPECS = {
    "mlp": ModelSpec(ModelKind.MLP, (14,), 2, hidden=(16, 8)),
    "cnn": ModelSpec(ModelKind.CNN, (1, 28, 28), 10, channels=(16, 32)),
    "resnet": ModelSpec(ModelKind.RESNET, (3, 32, 32), 10, width=8),
}


@pytest.mark.parametrize("family", sorted(SPECS))
def test_a_clone_is_an_independent_copy_with_the_same_values(family: str) -> None:
    template = build_model(SPECS[family], seed=0)
    _clone(template, {})  # the fast path applies to the zoo's own families (raises if it would not)
    copied = clone(template)
    reference = copy.deepcopy(template)
    assert [type(m) for m in copied.modules()] == [type(m) for m in reference.modules()]
    for (name, got), (_, want), (_, orig) in zip(
        copied.state_dict().items(), reference.state_dict().items(), template.state_dict().items(), strict=True
    ):
        assert torch.equal(got, want), name
        assert got.data_ptr() != orig.data_ptr(), f"{name} shares storage with the template"
    assert [p.requires_grad for p in copied.parameters()] == [p.requires_grad for p in template.parameters()]
    x = torch.randn(4, *SPECS[family].input_shape)
    assert torch.equal(copied(x), template(x))

    # training the copy, and hooking it, leaves the template as it was
    before = {k: v.clone() for k, v in template.state_dict().items()}
    copied.register_forward_hook(lambda *_: None)
    copied(x).sum().backward()
    torch.optim.SGD(copied.parameters(), lr=1.0).step()
    for k, v in template.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in template.parameters())
    assert not any(m._forward_hooks for m in template.modules())


def test_a_module_reached_twice_is_cloned_once() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    copied = clone(model)
    assert copied[0] is copied[2] and copied[0] is not shared


class _Configured(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = {"layers": [1, 2]}  # a mutable object inside a plain-looking container
        self.layer = nn.Linear(2, 2)


def _configured() -> nn.Module:
    return _Configured()


def _hooked() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2))
    model.register_forward_hook(lambda *_: None)
    return model


@pytest.mark.parametrize("make", [_configured, _hooked], ids=["mutable-attribute", "registered-hook"])
def test_anything_else_is_deep_copied(make) -> None:
    model = make()
    with pytest.raises(_NotPlain):
        _clone(model, {})
    copied = clone(model)
    assert copied is not model
    for got, want in zip(copied.parameters(), model.parameters(), strict=True):
        assert torch.equal(got, want) and got.data_ptr() != want.data_ptr()
    if isinstance(model, _Configured):
        assert copied.config == model.config and copied.config["layers"] is not model.config["layers"]


@pytest.mark.parametrize("leftover", ["grad", "grad_sample"])
def test_a_parameter_with_a_gradient_or_per_example_state_is_never_fast_copied(leftover: str) -> None:
    """Per-example gradients (Opacus's ``grad_sample``) or a ``.grad`` are data-derived: the fast
    path refuses them rather than share or silently drop them."""
    model = nn.Linear(2, 2)
    if leftover == "grad":
        model.weight.grad = torch.ones(2, 2)
    else:
        model.weight.grad_sample = torch.ones(5, 2, 2)
    with pytest.raises(_NotPlain):
        _clone(model, {})
    copied = clone(model)
    assert copied.weight.data_ptr() != model.weight.data_ptr()


def test_tied_weights_stay_tied() -> None:
    """One parameter in two modules (tied weights) is one parameter in the copy too, as with
    deepcopy (found in review: the fast path untied it, so the two would train apart)."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    model[2].weight = model[0].weight
    copied = clone(model)
    assert copied[0].weight is copied[2].weight
    assert copied[0].weight is not model[0].weight
    assert len(list(copied.parameters())) == len(list(model.parameters()))


def test_a_container_of_another_kind_is_deep_copied() -> None:
    from collections import defaultdict

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seen: defaultdict[str, int] = defaultdict(int)
            self.layer = nn.Linear(2, 2)

    model = Counting()
    copied = clone(model)
    copied.seen["x"] += 1
    assert isinstance(copied.seen, defaultdict) and model.seen == {}
