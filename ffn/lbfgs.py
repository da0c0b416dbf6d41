"""torch.optim.LBFGS over parameters that are views of one flat buffer, its step run in numpy.

torch's LBFGS works on one flat vector (the direction, the history, the line search's steps) and
moves between it and the parameters tensor by tensor: every trial point of the line search is a
slice, view and add_ per parameter, every reset a copy_ per parameter, every saved point a clone
per parameter. When the parameters are consecutive views of one buffer (`flatten_parameters_`),
`FlatLBFGS` does each of those as one op on the buffer.

On a CPU buffer of float32 or float64 the step itself runs in numpy on that same memory: torch's
`LBFGS.step` and `_strong_wolfe`, line for line (`_numpy_step`, `_numpy_strong_wolfe`,
`_cubic_interpolate` below), with numpy arrays for its vectors, BLAS's dot and axpy for the
two-loop recursion, and numpy scalars of the buffer's dtype for its 0-dim tensors (NumPy 2's
promotion of Python numbers against them is torch's against 0-dim tensors). An iteration is ~60
operations on vectors of the network's size (the two-loop recursion, the line search's tests),
each a few kernels' worth of dispatch in torch (a dot 1.3-1.9 us on 769-4810 elements, one
thread) and a fraction of it through BLAS (0.2-0.9 us), and every test reads a 0-dim tensor back.
The state holds the numpy step's arrays under torch's keys; `state_dict()` gives them as
tensors sharing their memory, and torch's own step (which takes over whenever the numpy step
cannot run) finds them as tensors too, so either step carries on from the other's state.
Iterates agree with torch.optim.LBFGS's to rounding (tests/test_lbfgs.py: step by step to 1e-12
in float64 with strong Wolfe searches of several points, with several iterations a step, and
without a line search; float32 to its rounding). Parameters that are not (or no longer) views
of the buffer, other devices and dtypes, a tensor lr or `differentiable` take torch's step and
its per-tensor moves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ffn.eager_optim import eager_class

_NUMPY_DTYPES = (torch.float32, torch.float64)


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


def _torch_step(cls: type) -> object:
    """torch's LBFGS.step itself, without the hook wrapper torch.optim puts on a class's step."""
    step = cls.step
    return step.__wrapped__ if getattr(step, "hooked", False) else step


class FlatLBFGS(eager_class(torch.optim.LBFGS)):
    """torch.optim.LBFGS (eager, ffn.eager_optim) whose parameter moves are one op on `flat`,
    and whose step runs in numpy when `flat` is a CPU float32/float64 buffer.

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

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """torch's LBFGS step: in numpy on the flat buffer where it can, else torch's own."""
        flat = self.flat_buffer()
        group = self.param_groups[0]
        if (
            flat is None
            or flat.device.type != "cpu"
            or flat.dtype not in _NUMPY_DTYPES
            or flat.requires_grad
            or not isinstance(group["lr"], int | float)
            or self.defaults.get("differentiable")
            or len(self.param_groups) != 1
        ):
            self._tensor_state()
            return _torch_step(torch.optim.LBFGS)(self, closure)
        return _numpy_step(self, closure, flat.numpy())

    def state_dict(self):
        """torch's, with the numpy step's vectors as tensors (sharing their memory)."""
        result = super().state_dict()
        result["state"] = {
            key: {name: _stored(value) for name, value in entry.items()}
            for key, entry in result["state"].items()
        }
        return result

    def _tensor_state(self) -> None:
        """The state's vectors as tensors, as torch's own step reads them."""
        for entry in self.state.values():
            for name, value in entry.items():
                entry[name] = _stored(value)

    def _numpy_flat_grad(self) -> np.ndarray:
        """`_gather_flat_grad` as a new array (zeros where a parameter has no gradient)."""
        views = []
        for p in self._params:
            grad = p.grad
            if grad is None:
                views.append(np.zeros(p.numel(), p.detach().numpy().dtype))
            else:
                grad = grad.to_dense() if grad.is_sparse else grad
                views.append(grad.detach().numpy().reshape(-1))
        return np.concatenate(views)

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


def _host(value):
    """A state entry as the numpy step holds it: a tensor as an array (0-dim: a numpy scalar of
    its dtype), a list of tensors as a list of those, anything else as it is."""
    if isinstance(value, Tensor):
        array = value.detach().cpu().numpy()
        return array[()] if array.ndim == 0 else array
    if isinstance(value, list) and any(isinstance(v, Tensor) for v in value):
        return [_host(v) for v in value]
    return value


def _stored(value):
    """A state entry as torch's step holds it: an array as a tensor sharing its memory, a numpy
    scalar (H_diag, ro's and al's entries) as a 0-dim tensor, a list of those as a list of
    tensors, anything else as it is. (A numpy scalar in a state_dict would make
    torch.load(weights_only=True), torch's default, refuse the file.)"""
    if isinstance(value, np.ndarray | np.generic):
        return torch.from_numpy(np.asarray(value))
    if isinstance(value, list) and any(isinstance(v, np.ndarray | np.generic) for v in value):
        return [_stored(v) for v in value]
    return value


class _Blas(NamedTuple):
    """The vector operations of one dtype: BLAS's dot (as a numpy scalar of the dtype, as
    torch's 0-dim dot is) and axpy (y += a x in place, returning y)."""

    dot: Callable[[np.ndarray, np.ndarray], np.generic]
    axpy: Callable[..., np.ndarray]


@functools.cache
def _blas(dtype: np.dtype) -> _Blas:
    # scipy at the first numpy step, not at import: ffn.step imports this module in every run,
    # and scipy's import is 0.28 s and 15 MiB that a default run (no L-BFGS) never uses
    from scipy.linalg.blas import get_blas_funcs

    dot, axpy = get_blas_funcs(("dot", "axpy"), dtype=dtype)
    scalar = dtype.type
    return _Blas(lambda a, b: scalar(dot(a, b)), axpy)


def _numpy_step(optimizer: FlatLBFGS, closure, flat: np.ndarray):
    """torch.optim.LBFGS.step (torch 2.13), line for line, on `flat` (the parameters' memory)."""
    closure = torch.enable_grad()(closure)

    group = optimizer.param_groups[0]
    lr = group["lr"]
    max_iter = group["max_iter"]
    max_eval = group["max_eval"]
    tolerance_grad = group["tolerance_grad"]
    tolerance_change = group["tolerance_change"]
    line_search_fn = group["line_search_fn"]
    history_size = group["history_size"]

    state = optimizer.state[optimizer._params[0]]
    state.setdefault("func_evals", 0)
    state.setdefault("n_iter", 0)

    orig_loss = closure()
    loss = float(orig_loss)
    current_evals = 1
    state["func_evals"] += 1

    flat_grad = optimizer._numpy_flat_grad()
    opt_cond = np.abs(flat_grad).max() <= tolerance_grad
    if opt_cond:
        return orig_loss
    dot, axpy = _blas(flat.dtype)

    d = _host(state.get("d"))
    t = _host(state.get("t"))
    old_dirs = _host(state.get("old_dirs"))
    old_stps = _host(state.get("old_stps"))
    ro = _host(state.get("ro"))
    H_diag = _host(state.get("H_diag"))
    prev_flat_grad = _host(state.get("prev_flat_grad"))
    prev_loss = state.get("prev_loss")

    def obj_func(x, t, d):  # torch's _directional_evaluate, on the one buffer
        flat[...] += t * d
        value = float(closure())
        grad = optimizer._numpy_flat_grad()
        flat[...] = x
        return value, grad

    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state["n_iter"] += 1

        # the direction
        if state["n_iter"] == 1:
            d = -flat_grad
            old_dirs = []
            old_stps = []
            ro = []
            H_diag = 1
        else:
            y = flat_grad - prev_flat_grad
            s = d * t
            ys = dot(y, s)
            if ys > 1e-10:
                if len(old_dirs) == history_size:
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)
                H_diag = ys / dot(y, y)

            num_old = len(old_dirs)
            if "al" not in state:
                state["al"] = [None] * history_size
            al = state["al"]

            # the two-loop recursion on one buffer, as torch runs it
            q = -flat_grad
            for i in range(num_old - 1, -1, -1):
                al[i] = dot(old_stps[i], q) * ro[i]
                q = axpy(old_dirs[i], q, a=-al[i])
            d = r = q * H_diag
            for i in range(num_old):
                be_i = dot(old_dirs[i], r) * ro[i]
                r = axpy(old_stps[i], r, a=al[i] - be_i)
            d = r

        if prev_flat_grad is None:
            prev_flat_grad = flat_grad.copy()
        else:
            prev_flat_grad[...] = flat_grad
        prev_loss = loss

        # the step length
        t = min(1.0, 1.0 / np.abs(flat_grad).sum()) * lr if state["n_iter"] == 1 else lr

        gtd = dot(flat_grad, d)
        if gtd > -tolerance_change:
            break

        ls_func_evals = 0
        if line_search_fn is not None:
            if line_search_fn != "strong_wolfe":
                raise RuntimeError("only 'strong_wolfe' is supported")
            x_init = flat.copy()
            loss, flat_grad, t, ls_func_evals = _numpy_strong_wolfe(
                obj_func, x_init, t, d, loss, flat_grad, gtd, dot, max_ls=max_eval - current_evals
            )
            flat += t * d
            opt_cond = np.abs(flat_grad).max() <= tolerance_grad
        else:
            flat += t * d
            if n_iter != max_iter:
                loss = float(closure())
                flat_grad = optimizer._numpy_flat_grad()
                opt_cond = np.abs(flat_grad).max() <= tolerance_grad
                ls_func_evals = 1

        current_evals += ls_func_evals
        state["func_evals"] += ls_func_evals

        # the stopping conditions
        if n_iter == max_iter:
            break
        if current_evals >= max_eval:
            break
        if opt_cond:
            break
        if np.abs(d * t).max() <= tolerance_change:
            break
        if abs(loss - prev_loss) < tolerance_change:
            break

    state["d"] = d
    state["t"] = t
    state["old_dirs"] = old_dirs
    state["old_stps"] = old_stps
    state["ro"] = ro
    state["H_diag"] = H_diag
    state["prev_flat_grad"] = prev_flat_grad
    state["prev_loss"] = prev_loss
    return orig_loss


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """torch.optim.lbfgs._cubic_interpolate, numpy's sqrt for the 0-dim tensor's."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = np.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _numpy_strong_wolfe(
    obj_func, x, t, d, f, g, gtd, dot, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25
):
    """torch.optim.lbfgs._strong_wolfe (torch 2.13), line for line, on numpy vectors (`dot`:
    the dtype's, `_blas`)."""
    d_norm = np.abs(d).max()
    g = g.copy()
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = dot(g_new, d)

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket = [t_prev, t]
            bracket_f = [f_prev, f_new]
            bracket_g = [g_prev, g_new.copy()]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket = [t]
            bracket_f = [f_new]
            bracket_g = [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket = [t_prev, t]
            bracket_f = [f_prev, f_new]
            bracket_g = [g_prev, g_new.copy()]
            bracket_gtd = [gtd_prev, gtd_new]
            break

        # interpolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(
            t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step)
        )

        # next step
        t_prev = tmp
        f_prev = f_new
        g_prev = g_new.copy()
        gtd_prev = gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = dot(g_new, d)
        ls_iter += 1

    # reached max number of iterations?
    if ls_iter == max_ls:
        bracket = [0, t]
        bracket_f = [f, f_new]
        bracket_g = [g, g_new]

    # zoom phase: refine the bracket until a point satisfies the criteria
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break

        t = _cubic_interpolate(
            bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1]
        )

        # t too close to the bracket's ends: move it 0.1 of the bracket inside
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = dot(g_new, d)
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo condition not satisfied or not lower than lowest point
            bracket[high_pos] = t
            bracket_f[high_pos] = f_new
            bracket_g[high_pos] = g_new.copy()
            bracket_gtd[high_pos] = gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # old high becomes new low
                bracket[high_pos] = bracket[low_pos]
                bracket_f[high_pos] = bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]

            # new point becomes new low
            bracket[low_pos] = t
            bracket_f[low_pos] = f_new
            bracket_g[low_pos] = g_new.copy()
            bracket_gtd[low_pos] = gtd_new

    t = bracket[low_pos]
    f_new = bracket_f[low_pos]
    g_new = bracket_g[low_pos]
    return f_new, g_new, t, ls_func_evals
