"""torch.optim.LBFGS over parameters that are views of one flat buffer.

torch's LBFGS works on one flat vector (the direction, the history, the line search's steps) and
moves between it and the parameters tensor by tensor: every trial point of the line search is a
slice, view and add_ per parameter, every reset a copy_ per parameter, every saved point a clone
per parameter. When the parameters are consecutive views of one buffer (`flatten_parameters_`),
`FlatLBFGS` does each of those as one op on the buffer, the same arithmetic elementwise; the
algorithm (direction, history, strong Wolfe search) is torch's own step, untouched. Parameters
that are not (or no longer) views of the buffer take torch's per-tensor methods.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ffn.eager_optim import eager_class


def flatten_parameters_(module: nn.Module) -> Tensor:
    """Make every parameter of `module` a view of one new flat buffer, in `parameters()` order,
    with the same values and requires_grad; returns the buffer (numel,).

    Build optimizers after this: they hold the parameter objects, which are new.
    """
    named = list(module.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    offset = 0
    for name, p in named:
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        view = flat[offset : offset + p.numel()].view_as(p)
        owner._parameters[leaf] = nn.Parameter(view, requires_grad=p.requires_grad)
        offset += p.numel()
    return flat


class FlatLBFGS(eager_class(torch.optim.LBFGS)):
    """torch.optim.LBFGS (eager, ffn.eager_optim) whose parameter moves are one op on `flat`.

    `flat` is set after construction (`optimizer.flat = flatten_parameters_(model)`); each move
    checks that the parameters still lie in it, in order (a few pointer comparisons).
    """

    flat: Tensor | None = None

    def flat_buffer(self) -> Tensor | None:
        """`flat` if the parameters are its consecutive contiguous views, else None."""
        flat = self.flat
        if flat is None:
            return None
        address, size, offset = flat.data_ptr(), flat.element_size(), 0
        for p in self._params:
            if p.data_ptr() != address + offset * size or not p.is_contiguous():
                return None
            offset += p.numel()
        return flat if offset == flat.numel() else None

    def _add_grad(self, step_size, update) -> None:
        flat = self.flat_buffer()
        if flat is None:
            return super()._add_grad(step_size, update)
        flat.add_(update, alpha=step_size)
        return None

    def _clone_param(self):
        flat = self.flat_buffer()
        return super()._clone_param() if flat is None else [flat.clone()]

    def _set_param(self, params_data) -> None:
        flat = self.flat_buffer()
        if flat is None or len(params_data) != 1:
            return super()._set_param(params_data)
        flat.copy_(params_data[0])
        return None
