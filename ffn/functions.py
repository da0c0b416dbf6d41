"""The hand-written derivatives, as `torch.autograd.Function` subclasses.

Each Function's forward and backward formulas are plain functions sitting side by side
(``linear_forward`` / ``linear_backward``, ...), so that a training step can chain them directly,
without an autograd graph, and still share one source of truth with the Functions.

Every Function is a full PyTorch citizen:

- second derivatives: each backward is made of differentiable torch ops over saved inputs and
  outputs (no ``once_differentiable``), so autograd differentiates the hand-written formula itself
  (Hessians, Hessian-vector products, gradient penalties);
- forward mode: a hand-written ``jvp``, the same derivative applied to the tangent;
- torch.func: ``setup_context`` plus ``generate_vmap_rule = True``, so vmap, jacfwd, hessian,
  per-sample gradients and ensembling work;
- autocast: backward and jvp run under the autocast state the forward ran under (what
  ``torch.amp.custom_bwd`` does, for whatever device the tensors are on).

The module knows nothing of the activation table: `activations.py` calls
`make_elementwise_function` once per entry.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

Elementwise = Callable[[Tensor, float], Tensor]

# nll_loss drops targets equal to its ignore_index (torch's default -100) from the mean; the
# hand-written backward knows no such labels. An ignore_index no int64 label can take makes the
# forward refuse -100 like any label outside [0, M) ("Target -100 is out of bounds"), at no cost.
_NO_IGNORED_LABEL = -(2**63)


# --- autocast: backward and jvp under the forward's autocast state ------------------------------


def _save_autocast(ctx: Any, t: Tensor) -> None:
    """Remember the autocast state forward ran under (custom_fwd's job, for any device)."""
    device = t.device.type
    enabled = torch.is_autocast_enabled(device)
    ctx.autocast = (device, torch.get_autocast_dtype(device)) if enabled else None


def _forward_autocast(ctx: Any) -> contextlib.AbstractContextManager:
    """The autocast context of forward, for backward and jvp (custom_bwd's job)."""
    # Entering torch.autocast costs microseconds, several times a small layer's backward.
    if ctx.autocast is None:
        return contextlib.nullcontext()
    device, dtype = ctx.autocast
    return torch.autocast(device, dtype=dtype)


# --- torch.compile: dynamo traces no Function that defines jvp ----------------------------------


def _without_jvp(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """The same Function without its jvp (same name, forward, setup_context, backward)."""
    body = {k: v for k, v in vars(function).items() if k not in ("jvp", "__dict__", "__weakref__")}
    return type(function.__name__, (torch.autograd.Function,), body)


class Apply:
    """`function.apply`, through a jvp-free twin while torch.compile traces.

    Dynamo (torch 2.13) breaks the graph at any Function that defines jvp; the twin keeps a
    compiled forward in one graph, and eager code keeps forward mode. The pair sits on a plain
    object because dynamo cannot look a Function class up in a dict or read its attributes.
    """

    def __init__(self, function: type[torch.autograd.Function]) -> None:
        self.function = function
        self.traceable = _without_jvp(function)

    def __call__(self, *args: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.traceable.apply(*args)
        return self.function.apply(*args)


# --- linear: z = x W + b ------------------------------------------------------------------------

# MKL off its home CPU: on this repo's first machine, a 2-core AMD EPYC (Zen 4, AVX-512), torch's
# MKL took slower paths than numpy's OpenBLAS at most float64 shapes a small network multiplies,
# and several times slower ones at narrow products (below); on the 2-core Intel Xeon (AVX-512)
# that followed, MKL is the faster of the two at every shape and plain products beat transposed
# ones (one thread, us, float64; `python benchmarks/bench_products.py`, load 1.6, MKL -> numpy's:
# (200, 64) @ (64, 64) 19.4 -> 23.5, (200, 64) @ (64, 10) 9.2 -> 10.5, (1797, 64) @ (64, 64) 164
# -> 248, (10, 5000) @ (5000, 64) 140 -> 285; a 200-row Adam step on digits 241 -> 258, a
# 1797-row one 1162 -> 1575). So both detours below, numpy's products and the transposed narrow
# ones, are taken only where torch's BLAS is MKL and the CPU is known not to be Intel's.


def cpu_vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD", ...), "" where none is found."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:  # Linux
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    if sys.platform != "win32":  # elsewhere platform.processor() runs `uname -p`, no vendor
        return ""
    import platform  # Windows names the vendor at the end ("... AuthenticAMD")

    words = platform.processor().split()
    return words[-1] if words and words[-1].startswith(("Genuine", "Authentic")) else ""


def mkl_slow_paths(vendor: str, blas_is_mkl: bool) -> bool:
    """Does torch's BLAS take MKL's slower paths: MKL on a CPU known not to be Intel's?"""
    return blas_is_mkl and vendor not in ("", "GenuineIntel")


MKL_SLOW_PATHS = mkl_slow_paths(cpu_vendor(), torch.backends.mkl.is_available())

# MKL's CPU gemm, off its home CPU, is slow when the product it writes has a few columns and many
# rows: it is then several times faster at the transposed product, C^T = B^T A^T, read back as C
# through .mT (a column-major C, same values, no copy). One thread, the AMD EPYC, us, C = A B,
# A (m, 64): float64 (200, 64) B (64, 10) 22 -> 14, (1797, 64) B (64, 10) 195 -> 117, B (64, 4)
# 131 -> 51; float32 (200, 64) B (64, 10) 20 -> 7, (1797, 64) B (64, 10) 168 -> 44. With a single
# column (gemv) or from 16 columns on the plain product is as fast or faster, and so it is on
# small products, where the transposed call's overhead shows ((200, 16) B (16, 2) 4.7 -> 5.3,
# (1000, 4) B (4, 3) float64 8.1 -> 13; (1000, 16) B (16, 2) gains, 17 -> 11): those keep it, as
# do other devices. Stacked (3-D, an ensemble's members) the batched gemm gains from 64 rows on,
# small products included: 32 members, float32, ms, baddbmm -> transposed: (64, 16) B (16, 2)
# 0.062 -> 0.022, (64, 128) B (128, 10) 0.57 -> 0.16, (1150, 128) B (128, 10) 12.5 -> 5.4; at 32
# rows it loses, (32, 16) B (16, 2) 0.024 -> 0.035. On the Intel Xeon MKL's plain products are
# the faster at nearly every one of these shapes (matmul, float64, us, plain -> transposed:
# (200, 64) B (64, 10) 6.5 -> 8.7, (1797, 64) B (64, 10) 48 -> 49, B (64, 4) 29 -> 113, (5000,
# 10) B (10, 2) 16 -> 55; float32 (1797, 64) B (64, 4) 30 -> 136; stacked, 32 members, float32,
# (64, 128) B (128, 10) 0.074 -> 0.089 ms, (1150, 128) B (128, 10) 1.46 -> 1.66; load 1.4; the 2-D
# ones by `python benchmarks/bench_products.py` (its "transposed" column), the stacked ones by an
# ad hoc timeit script): there the transposition is off (`MKL_SLOW_PATHS`).
_NARROW_COLUMNS = range(2, 16)
_TRANSPOSED_MIN_ROWS = 64
_TRANSPOSED_MIN_SIZE = 8192  # rows x inner dimension of A (2-D)


def _transposed(a: Tensor, b: Tensor) -> bool:
    """Compute a @ b as (b^T a^T)^T?  a: ([E,] m, k), b: ([E,] k, n)."""
    # The checks that fail on a minibatch first, and is_cpu, not device.type (which builds a
    # torch.device): this runs for every product of every step.
    if not MKL_SLOW_PATHS:
        return False
    shape = a.shape
    rows = shape[-2]
    return (
        rows >= _TRANSPOSED_MIN_ROWS
        and b.shape[-1] in _NARROW_COLUMNS
        and (rows * shape[-1] >= _TRANSPOSED_MIN_SIZE or a.ndim == 3)
        and a.ndim in (2, 3)
        and a.is_cpu
    )


# Inside `numpy_products()`, a CPU product of two float64 matrices is numpy's (its OpenBLAS),
# which on the AMD EPYC (AVX-512, where MKL takes a slower path) is faster at most shapes
# a small network multiplies (one thread, us, `python benchmarks/bench_products.py`,
# load 1.9): (200, 64) @ (64, 64) 50 -> 36, (200, 64) @ (64, 10) 16 -> 11, (1797, 64) @ (64, 64)
# 449 -> 338, (10, 5000) @ (5000, 64) 329 -> 225; a whole 200-row Adam step on digits 336 -> 314,
# a 5000-row step on friedman1 1567 -> 1300. An outer product (inner dimension 1) and a gemv stay
# torch's (numpy's outer product is 8x slower), and so do small products, where ~5 us of checks
# and hand-over cost what numpy saves. numpy's result is a plain row-major array, which torch
# shares without a copy. Off by default: numpy's BLAS runs on its own threads, which the caller
# sets (ffn.sklearn's estimators set both), and the products are numbers only: a product autograd
# must record (an input that requires grad, under grad mode), a tensor subclass, a transform's
# wrapped tensor (vmap, torch.func), forward AD and dispatch modes stay torch's. The estimators
# open a block only where `MKL_SLOW_PATHS` (on the Intel Xeon MKL is faster, above).
_NUMPY_PRODUCTS: ContextVar[bool] = ContextVar("ffn_numpy_products", default=False)
# How many enabled `numpy_products()` blocks are open in the process, in any thread: while none
# is, no product asks the context variable or torch.compiler (two Python calls per product, 5-10%
# of a tiny step's time). A plain global, so a traced graph guards on it and does not break.
_numpy_blocks = 0
_numpy_blocks_lock = threading.Lock()
# float64 only: in float32 MKL ties OpenBLAS from 1797 rows on ((1797, 64) @ (64, 64) 160 against
# 157 us) and no float32 fit measured faster through numpy
_NUMPY_DTYPES = (torch.float64,)
# Which products numpy computes (rows x inner x columns, measured in the graph-free step): from
# 2**18 on all but outer products and gemv; from 2**15 the deep ones, inner dimension 32+, with
# 16+ rows ((200, 10) @ (10, 64) and (10, 200) @ (200, 64) were 12 and 5 us slower in a step).
_NUMPY_ALWAYS, _NUMPY_MIN = 2**18, 2**15
PLAIN_TENSORS = (Tensor, torch.nn.Parameter)  # no subclass: what numpy may read in place


@contextlib.contextmanager
def numpy_products(enabled: bool = True) -> Iterator[None]:
    """Inside, `matmul` and `linear_forward` multiply CPU float64 matrices with numpy's BLAS."""
    global _numpy_blocks
    token = _NUMPY_PRODUCTS.set(enabled)
    counted = 1 if enabled else 0  # only enabled blocks are counted: a disabled one costs nothing
    with _numpy_blocks_lock:
        _numpy_blocks += counted
    try:
        yield
    finally:
        with _numpy_blocks_lock:
            _numpy_blocks -= counted
        _NUMPY_PRODUCTS.reset(token)


def _numpy_product(a: Tensor, b: Tensor) -> bool:
    """Compute a @ b with numpy?  a: (m, k), b: (k, n).  The cheapest checks first (its
    callers ask `_numpy_blocks` before the call: no call at all while no block is open)."""
    if torch.compiler.is_compiling():  # a traced graph keeps torch's product (and no break)
        return False
    if not (_NUMPY_PRODUCTS.get() and a.ndim == 2 and b.ndim == 2):
        return False
    (rows, inner), columns = a.shape, b.shape[1]
    size = rows * inner * columns
    return (
        min(rows, inner, columns) >= 2
        and (size >= _NUMPY_ALWAYS or (size >= _NUMPY_MIN and rows >= 16 and inner >= 32))
        and a.dtype in _NUMPY_DTYPES
        and a.dtype == b.dtype
        and _blas_layout(a)
        and _blas_layout(b)
        and _numbers_only(a)
        and _numbers_only(b)
        and _no_mode()
    )


def _blas_layout(t: Tensor) -> bool:
    """Row- or column-major in memory (what numpy hands BLAS in place)?  t: (m, k)."""
    strides = t.stride()
    return strides[1] == 1 or strides[0] == 1


def _numbers_only(t: Tensor) -> bool:
    """t's numbers are all a product needs: a plain CPU tensor that autograd need not follow."""
    return (
        t.is_cpu
        and type(t) in PLAIN_TENSORS
        and not (t.requires_grad and torch.is_grad_enabled())
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
        and not torch._C._functorch.is_legacy_batchedtensor(t)
    )


def _no_mode() -> bool:
    """No forward-mode AD level, dispatch or torch-function mode that should see the product."""
    return (
        forward_ad._current_level < 0
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
    )


def _numpy_bias(bias: Tensor, x: Tensor) -> bool:
    """A bias added after numpy's product: x's dtype, and nothing but its numbers needed."""
    return bias.dtype == x.dtype and _numbers_only(bias)


def _as_numpy(t: Tensor) -> np.ndarray:
    return (t.detach() if t.requires_grad else t).numpy()


def _numpy_matmul(a: Tensor, b: Tensor) -> Tensor:
    return torch.from_numpy(np.matmul(_as_numpy(a), _as_numpy(b)))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b, column-major where MKL off Intel's CPUs is faster at that, numpy's inside an
    enabled `numpy_products` (see above).  (m, k), (k, n) -> (m, n)."""
    if _numpy_blocks and _numpy_product(a, b):
        return _numpy_matmul(a, b)
    if _transposed(a, b):
        return (b.mT @ a.mT).mT
    return a @ b


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """z = x W + b.  x: (n, d), weight: (d, H), bias: (H,) -> z: (n, H).

    Stacked (an ensemble's E members, ffn/ensemble): x: (E, n, d), weight: (E, d, H),
    bias: (E, H) -> z: (E, n, H), each member's own formula in one baddbmm.
    A narrow z (a few outputs: logits) comes back column-major where `MKL_SLOW_PATHS` (`matmul`).
    """
    if bias is None:
        return matmul(x, weight)
    if _numpy_blocks and _numpy_product(x, weight) and _numpy_bias(bias, x):
        return _numpy_matmul(x, weight).add_(bias)  # torch's broadcast add: 3x numpy's
    if x.ndim == 2:
        if _transposed(x, weight):  # z^T = W^T x^T + b (b per row of z^T)
            return torch.addmm(bias.unsqueeze(-1), weight.mT, x.mT).mT
        return torch.addmm(bias, x, weight)
    if _transposed(x, weight):
        return torch.baddbmm(bias.unsqueeze(-1), weight.mT, x.mT).mT
    return torch.baddbmm(bias.unsqueeze(-2), x, weight)


def linear_backward(
    grad_z: Tensor, x: Tensor, weight: Tensor, need_x: bool = True, need_bias: bool = True
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """dx = dz W^T, dW = x^T dz, db = sum_i dz_i.  grad_z: (n, H) -> (n, d), (d, H), (H,).

    Stacked members: grad_z: (E, n, H) -> (E, n, d), (E, d, H), (E, H).
    """
    grad_x = matmul(grad_z, weight.mT) if need_x else None
    grad_w = matmul(x.mT, grad_z).contiguous()  # a weight's gradient has its (row-major) layout
    grad_b = grad_z.sum(-2) if need_bias else None
    return grad_x, grad_w, grad_b


def linear_jvp(
    dx: Tensor | None, dw: Tensor | None, db: Tensor | None, x: Tensor, weight: Tensor
) -> Tensor:
    """dz = dx W + x dW + db (the product rule; a None tangent is zero).  -> (n, H)."""
    dz = matmul(dx, weight) if dx is not None else None  # z's layout (forward AD needs it)
    if dw is not None:
        dz = matmul(x, dw) if dz is None else dz + matmul(x, dw)
    if db is not None:
        dz = db.expand(x.shape[0], -1) if dz is None else dz + db
    return dz


class LinearFunction(torch.autograd.Function):
    """Affine layer z = x W + b with W stored as (d, H), as the notes write it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return linear_forward(x, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.has_bias = bias is not None
        _save_autocast(ctx, output)

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        with _forward_autocast(ctx):
            grad_x, grad_w, grad_b = linear_backward(
                grad_z, x, weight, need_x, need_b and ctx.has_bias
            )
        return grad_x, grad_w if need_w else None, grad_b

    @staticmethod
    def jvp(ctx: Any, dx: Tensor | None, dw: Tensor | None, db: Tensor | None) -> Tensor:
        x, weight = ctx.saved_tensors
        with _forward_autocast(ctx):
            return linear_jvp(dx, dw, db, x, weight)


# --- elementwise activations: h = g(z), dz = dh * g'(z) -----------------------------------------


def make_elementwise_function(
    name: str,
    doc: str,
    forward: Elementwise,
    derivative: Elementwise,
    saves: Literal["output", "input"],
) -> type[torch.autograd.Function]:
    """The Function of h = forward(z, param), its derivative g' taken from the saved tensor.

    `saves` says whether g' is written in terms of the output h (sigmoid, tanh, relu, ...), in
    which case only h is saved, or needs the input z (ELU, for its tail; GELU). Backward is
    dh * g'(saved) and jvp dz * g'(saved); both are torch ops, so autograd differentiates them
    again (through the saved h, whose own backward is this Function's) for second derivatives.
    `name` is the class name, e.g. "SigmoidFunction".
    """
    save_output = saves == "output"

    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        z, param = inputs
        saved = output if save_output else z
        ctx.save_for_backward(saved)
        ctx.save_for_forward(saved)
        ctx.param = param
        _save_autocast(ctx, output)

    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor, None]:
        (saved,) = ctx.saved_tensors
        with _forward_autocast(ctx):
            return grad_h * derivative(saved, ctx.param), None

    def jvp(ctx: Any, dz: Tensor, _dparam: None) -> Tensor:
        (saved,) = ctx.saved_tensors
        with _forward_autocast(ctx):
            return dz * derivative(saved, ctx.param)

    return type(
        name,
        (torch.autograd.Function,),
        {
            "__doc__": doc,
            "__module__": __name__,
            "generate_vmap_rule": True,
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
            "jvp": staticmethod(jvp),
        },
    )


# --- softmax + cross-entropy, fused ------------------------------------------------------------


def _check_labels(target: Tensor) -> None:
    """The dtype only, read from metadata: no host sync (nll_loss checks shapes and range)."""
    # F.cross_entropy also takes uint8 labels, but scatter_ in the backward indexes with int64
    # only; refusing them here costs nothing, converting them would cost every step a kernel.
    if target.dtype is not torch.int64:
        raise ValueError(
            f"softmax_cross_entropy: target must hold int64 class labels, got {target.dtype}"
        )


# torch's log_softmax and softmax kernels on the CPU vectorise along a row of classes, which with
# a few classes is shorter than a vector: then they cost 10-20 ns an element. Applied along the
# classes as a non-last dim (on logits.mT, dim -2, whose contiguous case is a column-major z) the
# same kernel vectorises across rows instead (one thread, AMD EPYC, us, torch's row kernel -> along
# the classes: float32 (64, 10) 9.4 -> 4.1, (1168, 10) 143 -> 9.6, (256, 3) 8.5 -> 4.0, stacked
# (32, 64, 10) 253 -> 16, (32, 1168, 10) 4616 -> 135; float64 (1168, 16) 114 -> 19; from a
# row-major z: float32 (256, 10) 28.9 -> 5.3, float64 (256, 16) 26.5 -> 14.2). It wins from
# about 512 logits; below that, and on a row-major float32 z with 16+ classes (a whole vector a
# row: (1168, 16) 13.4 -> 19.6) or over 32 classes, torch's row kernel stays; a column-major z
# (a narrow product where MKL_SLOW_PATHS) takes the class path whenever it has 2-32 classes
# ((1168, 32) 35.9 -> 14.0). The values are the kernel's formula either way (max-shifted, rounding
# apart: tests/test_functions.py). The size counted is one member's (its rows x classes), so a
# stacked member of the layout its single run has takes the same path, with the same values;
# where MKL_SLOW_PATHS makes a stack's narrow product column-major and the single run's
# row-major (under 8192 rows x inner size), the two may differ at rounding level.
_BY_CLASS_DTYPES = (torch.float32, torch.float64)
_BY_CLASS_CLASSES = range(2, 33)
_BY_CLASS_MIN_LOGITS = 512
_ROW_KERNEL_FLOAT32_FROM_CLASSES = 16


def _by_class(logits: Tensor) -> bool:
    """Softmax along the classes as a non-last dim (logits.mT, dim -2)?  logits: (..., n, M)."""
    # The class count first (two classes, the tiny step's, fail on the size there), is_cpu
    # rather than device.type (which builds a torch.device): this runs every step.
    shape = logits.shape
    if not (
        len(shape) >= 2
        and shape[-1] in _BY_CLASS_CLASSES
        and logits.is_cpu
        and logits.dtype in _BY_CLASS_DTYPES
    ):
        return False
    if logits.mT.is_contiguous():  # column-major: the class path reads it in place
        return True
    if logits.dtype == torch.float32 and shape[-1] >= _ROW_KERNEL_FLOAT32_FROM_CLASSES:
        return False
    return shape[-2] * shape[-1] >= _BY_CLASS_MIN_LOGITS


def log_softmax(logits: Tensor) -> Tensor:
    """log softmax(z) = (z - max) - log sum_m exp(z_m - max), over the last dim.  (..., M).

    Column-major where the class path is taken (`_by_class`), else logits' layout.
    """
    if _by_class(logits):
        return torch.log_softmax(logits.mT, dim=-2).mT
    return torch.log_softmax(logits, dim=-1)


def softmax(logits: Tensor) -> Tensor:
    """softmax(z) = exp(z - max) / sum_m exp(z_m - max), over the last dim.  (..., M)."""
    if _by_class(logits):
        return torch.softmax(logits.mT, dim=-2).mT
    return torch.softmax(logits, dim=-1)


def _mean_nll(log_probs: Tensor, target: Tensor) -> Tensor:
    """-(1/n) sum_i log_probs[i, y_i].  (n, M), (n,) -> (); stacked (E, n, M), (E, n) -> (E,)."""
    if log_probs.ndim == 2:  # one kernel, where gather, mean and neg are three
        return F.nll_loss(log_probs, target, ignore_index=_NO_IGNORED_LABEL)
    if log_probs.mT.is_contiguous():  # column-major (the class path): (E, M, n) read in place
        # nll_loss's (N, C, d) form, the same values as flattening, which copies the members'
        # columns into rows first ((32, 1168, 10) float32: 179 -> 107 us)
        per_member = F.nll_loss(
            log_probs.mT, target, ignore_index=_NO_IGNORED_LABEL, reduction="none"
        )
        return per_member.mean(-1)
    per_row = F.nll_loss(  # (E n,): nll_loss takes (N, M) only
        log_probs.flatten(0, -2), target.flatten(), ignore_index=_NO_IGNORED_LABEL, reduction="none"
    )
    return per_row.view(target.shape).mean(-1)


def softmax_cross_entropy_value(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy of softmax(logits), the loss alone.  (n, M), (n,) int64 -> ().

    Stacked members: logits (E, n, M), target (E, n) -> (E,) (each member's mean).
    Unlike F.cross_entropy, label -100 is refused (out of bounds), not ignored; n = 0 gives NaN.
    """
    _check_labels(target)
    return _mean_nll(log_softmax(logits), target)


def softmax_cross_entropy_forward(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The mean cross-entropy and softmax(logits) from one exp.  -> loss: (), probs: (n, M).

    As `softmax_cross_entropy_value` for shapes and labels; only values come from here, the
    gradient is the hand-written (p - onehot) / n below. The log-probabilities are written over
    by the probabilities once read (one allocation fewer; `softmax_cross_entropy_backward`'s
    into_probs writes the delta into p in turn).
    """
    _check_labels(target)
    log_probs = log_softmax(logits)
    loss = _mean_nll(log_probs, target)
    # p row-major, as the delta's products downstream read it fastest (a column-major delta
    # made a stacked step's bmm and copies 0.5 ms slower: 32 digits members, AMD EPYC); exp
    # where it lies, then the copy (exp into a row-major out= reads strided: 3x slower)
    return loss, log_probs.exp_().contiguous()


def softmax_cross_entropy_backward(
    probs: Tensor, target: Tensor, into_probs: bool = False
) -> Tensor:
    """d loss / d logits = (softmax(z) - onehot(y)) / n.  probs: (n, M) -> (n, M).

    Stacked members: probs (E, n, M), target (E, n) -> (E, n M), each member's mean's gradient.
    into_probs: written into probs (the caller's own, read no more), one allocation fewer.
    """
    n = target.shape[-1]  # not len(): Tensor.__len__ is a Python-level wrapper
    scale = 1.0 / (n or 1)  # n = 0: an empty gradient, whatever the scale
    index = target.unsqueeze(-1)
    # p / n, then -1 / n added at each label in place: two kernels, where indexing costs several.
    # scatter_ with a scalar has no derivative; when autograd records this (create_graph, for
    # second derivatives) scatter_add_ of a broadcast -1/n, a little slower, keeps it in the graph.
    scaled = probs.mul_(scale) if into_probs else probs * scale
    if torch.is_grad_enabled():
        return scaled.scatter_add_(-1, index, probs.new_full((), -scale).expand_as(index))
    return scaled.scatter_(-1, index, -scale, reduce="add")


def softmax_cross_entropy_jvp(dlogits: Tensor, probs: Tensor, target: Tensor) -> Tensor:
    """d loss = (1/n) sum_i (p_i - onehot(y_i)) . dz_i.  dlogits: (n, M) -> ()."""
    return (softmax_cross_entropy_backward(probs, target) * dlogits).sum()


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """Cross-entropy of softmax(logits) against integer classes; the output delta is p - y."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Tensor, target: Tensor) -> Tensor:
        return softmax_cross_entropy_value(logits, target)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        logits, target = inputs
        # Recomputing softmax in backward costs one exp; saving only inputs keeps forward's output
        # a plain scalar, as autograd expects of a loss. `softmax` of the saved logits is
        # what autograd differentiates for the second derivative, diag(p) - p p^T.
        ctx.save_for_backward(logits, target)
        ctx.save_for_forward(logits, target)
        _save_autocast(ctx, logits)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor, None]:
        logits, target = ctx.saved_tensors
        with _forward_autocast(ctx):
            return softmax_cross_entropy_backward(softmax(logits), target) * grad_loss, None

    @staticmethod
    def jvp(ctx: Any, dlogits: Tensor, _dtarget: None) -> Tensor:
        logits, target = ctx.saved_tensors
        with _forward_autocast(ctx):
            return softmax_cross_entropy_jvp(dlogits, softmax(logits), target)


# --- mean squared error, the notes' l_n --------------------------------------------------------


def _check_same_shape(pred: Tensor, target: Tensor) -> None:
    # F.mse_loss warns and broadcasts: (n, 1) against (n,) becomes an (n, n) loss, silently wrong.
    if pred.shape != target.shape:
        raise ValueError(
            f"mse: pred and target must have the same shape (n, M), got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )


def mse_forward(pred: Tensor, target: Tensor) -> Tensor:
    """(1/n) sum_i ||pred_i - target_i||^2.  pred, target: (n, M) -> (); n = 0 gives NaN.

    Stacked members: pred, target (E, n, M) -> (E,).
    """
    _check_same_shape(pred, target)
    if pred.ndim == 2:
        return (pred - target).square().sum() / pred.shape[0]
    return (pred - target).square().sum((-2, -1)) / pred.shape[-2]


def mse_backward(pred: Tensor, target: Tensor) -> Tensor:
    """d l_n / d pred = 2 (pred - target) / n.  -> (n, M) (stacked members: (E, n, M))."""
    return (pred - target).mul_(2.0 / (pred.shape[-2] or 1))  # n = 0: an empty gradient


class MSEFunction(torch.autograd.Function):
    """Sum over outputs, mean over samples: M times torch's default `F.mse_loss`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(pred: Tensor, target: Tensor) -> Tensor:
        return mse_forward(pred, target)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)
        _save_autocast(ctx, output)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, Tensor | None]:
        pred, target = ctx.saved_tensors
        with _forward_autocast(ctx):
            grad_pred = mse_backward(pred, target) * grad_loss
        need_pred, need_target = ctx.needs_input_grad
        return grad_pred if need_pred else None, -grad_pred if need_target else None

    @staticmethod
    def jvp(ctx: Any, dpred: Tensor | None, dtarget: Tensor | None) -> Tensor:
        pred, target = ctx.saved_tensors
        with _forward_autocast(ctx):
            delta = mse_backward(pred, target)
            if dpred is None:
                return -(delta * dtarget).sum()
            if dtarget is None:
                return (delta * dpred).sum()
            return (delta * (dpred - dtarget)).sum()
