"""Every learner's optimizers, built in one place with the fastest implementation torch has.

torch's optimizers run one of three implementations: a loop of small kernels per parameter (what CPU
runs unless told otherwise), ``foreach`` (one multi-tensor kernel per operation) or ``fused`` (one
kernel for the whole step). For the parameters of four 256-wide MLPs on one CPU thread an Adam step
takes about 1150 µs single-tensor, 680 µs ``foreach`` and 250 µs ``fused`` (issue 35;
``benchmarks/update_speed_before_after.md`` times every learner with and without this choice).
:func:`make_optimizer` asks for ``fused`` where the optimizer has a fused kernel for every device
and dtype among the parameters (probed once per triple with a one-element step) and ``foreach``
elsewhere.

Fused steps round differently from the per-parameter loop (same equations, another order of
floating-point operations), so a run's numbers change at the last bits and then drift as any
two seeds do. The implementation belongs to the process, not to a checkpoint: loading a state dict
(written single-tensor by rlft before issue 35, or on another device) keeps the optimizer's state
and hyperparameters and re-applies this machine's choice, so exact resume holds for every run this
code writes.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Iterable

import torch

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def _has_fused_option(optimizer_class: type[torch.optim.Optimizer]) -> bool:
    return "fused" in inspect.signature(optimizer_class).parameters


@functools.cache
def _has_fused_kernel(optimizer_class: type[torch.optim.Optimizer], device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``optimizer_class(..., fused=True)`` steps a parameter of ``dtype`` on ``device``."""
    if not _has_fused_option(optimizer_class):
        return False
    probe = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
    probe.grad = torch.ones_like(probe)
    try:
        optimizer_class([probe], fused=True).step()
    except (RuntimeError, NotImplementedError):
        return False
    return True


def implementation(optimizer_class: type[torch.optim.Optimizer], tensors: Iterable[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True, "foreach": False}`` where ``optimizer_class`` has a fused kernel for every
    (device, dtype) of ``tensors``, else ``{"foreach": True}`` (and ``"fused": False`` where the class
    has the option)."""
    kinds = {(t.device, t.dtype) for t in tensors}
    if kinds and all(_has_fused_kernel(optimizer_class, device, dtype) for device, dtype in kinds):
        return {"fused": True, "foreach": False}
    return {"foreach": True} | ({"fused": False} if _has_fused_option(optimizer_class) else {})


def _parameters(params: list) -> list[torch.Tensor]:
    """The tensors of ``params``: a list of tensors or of param-group dicts."""
    if params and isinstance(params[0], dict):
        return [p for group in params for p in group["params"]]
    return params


def _reapply(choice: dict[str, bool], optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: this process's implementation, whatever the checkpoint's was; a
    fused step keeps its step counts as float32 tensors on the parameters' device."""
    for group in optimizer.param_groups:
        group.update(choice)
        if choice.get("fused"):
            for p in group["params"]:
                state = optimizer.state.get(p)
                if state and torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(dtype=torch.float32, device=p.device)


def make_optimizer(optimizer_class: type[torch.optim.Optimizer], params: Params,
                   **hyperparameters: Any) -> torch.optim.Optimizer:
    """``optimizer_class(params, **hyperparameters)`` on its fastest implementation here
    (:func:`implementation`), which it keeps across ``load_state_dict``."""
    params = [dict(group) if isinstance(group, dict) else group for group in params]
    for group in params:
        if isinstance(group, dict):
            group["params"] = list(group["params"])
    choice = implementation(optimizer_class, _parameters(params))
    optimizer = optimizer_class(params, **hyperparameters, **choice)
    optimizer.register_load_state_dict_post_hook(functools.partial(_reapply, choice))
    if choice.get("fused"):
        optimizer.register_step_post_hook(_count_in_place_writes)
    return optimizer


def _count_in_place_writes(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Bump the version counter of every parameter a fused step wrote. torch's CPU fused kernels write
    parameters without it (torch 2.13), and the single-tensor and ``foreach`` paths do bump it; caches of
    weights derived from parameters (``policies/llm.py``: the bfloat16 sampling copy, the decoder's
    fused projections) read the counters to know a parameter changed in place."""
    torch.autograd.graph.increment_version(
        [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None])


def adam(params: Params, lr: float = 1e-3, **hyperparameters: Any) -> torch.optim.Adam:
    """:class:`torch.optim.Adam` (torch's default ``lr``, which param groups may override) through
    :func:`make_optimizer`."""
    return make_optimizer(torch.optim.Adam, params, lr=lr, **hyperparameters)


def adamw(params: Params, lr: float = 1e-3, **hyperparameters: Any) -> torch.optim.AdamW:
    """:class:`torch.optim.AdamW` through :func:`make_optimizer`."""
    return make_optimizer(torch.optim.AdamW, params, lr=lr, **hyperparameters)
