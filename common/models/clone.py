"""A fresh, independent copy of a model: what ``copy.deepcopy`` gives, without its generic walk.

A site builds the job's model for every request from a template kept in the process
(client/handlers.py). ``copy.deepcopy`` visits every attribute of every module through Python's
generic protocol (a few hundred calls for a three-layer MLP, 0.3 ms a round). :func:`clone`
copies what a module is made of directly: new parameter and buffer tensors (their values
copied, ``requires_grad`` kept), submodules cloned in turn (a module reached twice is cloned
once, as deepcopy's memo does), hook and bookkeeping containers copied, plain values (numbers,
strings, dtypes, tuples of them) shared, since they cannot change in place.

A module holding anything else (a config object, a plain tensor attribute, a registered hook, a
parameter carrying per-example gradients or a ``.grad``) is copied with ``copy.deepcopy``
instead, whole: the fast path never shares a mutable object between the template and a copy.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

_PLAIN = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.memory_format)


class _NotPlain(Exception):
    """The module holds something the fast path does not copy."""


def clone(model: nn.Module) -> nn.Module:
    """An independent copy of ``model`` (the values ``copy.deepcopy`` would give)."""
    try:
        _storages_unshared(model)
        return _clone(model, {})
    except _NotPlain:
        return copy.deepcopy(model)


def _storages_unshared(model: nn.Module) -> None:
    """Tied weights (one parameter in two modules) or tensors viewing one storage are deepcopy's
    to keep tied: the fast path copies tensors one by one and would untie them (found in review)."""
    seen: set[int] = set()
    for module in model.modules():
        for t in (*module._parameters.values(), *module._buffers.values()):
            if t is None:
                continue
            storage = t.untyped_storage().data_ptr()
            if storage in seen and t.numel() > 0:
                raise _NotPlain
            seen.add(storage)


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_plain(v) for v in value)
    return False


def _tensor(t: torch.Tensor) -> torch.Tensor:
    if type(t) is not torch.Tensor or t.grad is not None or t.requires_grad:
        raise _NotPlain
    return t.detach().clone(memory_format=torch.preserve_format)


def _parameter(p: nn.Parameter) -> nn.Parameter:
    # an attribute on the parameter (Opacus's grad_sample, bk's summed_grad) or a gradient would be
    # per-example or data-derived state: never copied by the fast path, and never shared
    if type(p) is not nn.Parameter or p.grad is not None or p.__dict__:
        raise _NotPlain
    return nn.Parameter(p.detach().clone(memory_format=torch.preserve_format), requires_grad=p.requires_grad)


def _container(value: dict | set | list) -> dict | set | list:
    """A hook or bookkeeping container: empty hook dicts and sets of names are copied; a
    registered hook (a function that may close over anything) is not for the fast path, nor a
    container of another kind (a defaultdict, say)."""
    if type(value) not in (dict, OrderedDict, set, list):
        raise _NotPlain
    if isinstance(value, dict):
        if not all(_plain(k) and _plain(v) for k, v in value.items()):
            raise _NotPlain
        return type(value)(value)
    if not all(_plain(v) for v in value):
        raise _NotPlain
    return type(value)(value)


def _clone(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    if getattr(type(module), "__deepcopy__", None) is not None:  # a module that copies itself its own way
        raise _NotPlain
    new = object.__new__(type(module))
    memo[id(module)] = new
    state: dict[str, Any] = {}
    for name, value in module.__dict__.items():
        if name == "_parameters":
            state[name] = {k: None if p is None else _parameter(p) for k, p in value.items()}
        elif name == "_buffers":
            state[name] = {k: None if b is None else _tensor(b) for k, b in value.items()}
        elif name == "_modules":
            state[name] = {k: None if m is None else _clone(m, memo) for k, m in value.items()}
        elif _plain(value):
            state[name] = value
        elif isinstance(value, (dict, set, list)):
            state[name] = _container(value)
        else:
            raise _NotPlain
    new.__dict__.update(state)
    return new
