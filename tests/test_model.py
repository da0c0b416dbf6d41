"""FeedForward: hand-written backward == autograd twin, the single neuron, initialisation, bad
config, and one gradient-descent step worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from penalty_cases import CASE_IDS, CASES

from ffn.activations import ACTIVATIONS
from ffn.constants import TASKS
from ffn.errors import ConfigError
from ffn.losses import loss_function
from ffn.model import FeedForward
from ffn.penalties import Penalty

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def make_data(task: str, n: int, d: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (n, d) float64; y: (n,) int64 classes for classification, (n, m) float64 otherwise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    if task == "classification":
        return x, torch.randint(m, (n,), generator=g)
    return x, torch.randn(n, m, generator=g, dtype=F64)


def manual_gradients(model: FeedForward, x, y, task: str, penalty: Penalty) -> torch.Tensor:
    """The framework's path: hand-written loss backward, then the penalty's own gradient."""
    loss = loss_function(task, "manual")(model(x), y)
    loss.backward()
    penalty.add_gradient_(penalty.parameters(model))
    return loss.detach()


def autograd_gradients(twin: FeedForward, x, y, task: str, penalty: Penalty) -> torch.Tensor:
    """torch's path: native ops and the penalty's smooth part, all differentiated by autograd."""
    loss = loss_function(task, "autograd")(twin(x), y)
    (loss + penalty.smooth_value(penalty.parameters(twin))).backward()
    return loss.detach()


def assert_same_grads(model: FeedForward, twin: FeedForward, atol: float = 1e-10) -> None:
    named = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, named[name].grad, rtol=0, atol=atol, msg=name)


# --- whole networks: manual == autograd ---------------------------------------------------------


@pytest.mark.usefixtures("penalty_table")
@pytest.mark.parametrize(("name", "method"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_manual_gradients_equal_autograd_twin(activation, task, name, method):
    penalty = Penalty(name, lam=0.1, method=method, l1_ratio=0.3)
    seed = 1234
    x, y = make_data(task, n=11, d=5, m=3, seed=seed)
    model = FeedForward(5, [7, 4], 3, activation=activation, dtype=F64, seed=seed)
    twin = model.with_backend("autograd")
    out, twin_out = model(x), twin(x)
    # the comparison only means something if the two really run different code
    assert type(out.grad_fn).__name__ == "LinearFunctionBackward"
    assert type(twin_out.grad_fn).__name__ == "AddmmBackward0"

    loss = manual_gradients(model, x, y, task, penalty)
    twin_loss = autograd_gradients(twin, x, y, task, penalty)
    torch.testing.assert_close(loss, twin_loss, rtol=0, atol=1e-12)
    assert_same_grads(model, twin)

    # and one optimiser step (+ soft-thresholding for the proximal methods) keeps them together
    for net in (model, twin):
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        opt.step()
        penalty.proximal_step_(opt, penalty.parameters(net))
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("hidden", [[], [4]], ids=["single-neuron", "one-hidden"])
@pytest.mark.parametrize("task", TASKS)
def test_small_shapes_single_neuron_and_single_output(task, hidden, out_features):
    x, y = make_data(task, n=1 if hidden else 6, d=3, m=out_features, seed=7)
    model = FeedForward(3, hidden, out_features, activation="tanh", dtype=F64, seed=7)
    twin = model.with_backend("autograd")
    out = model(x)
    assert out.shape == (x.shape[0], out_features)
    assert model.hidden == hidden and len(model.layers) == len(hidden) + 1
    loss = manual_gradients(model, x, y, task, Penalty())
    assert torch.isfinite(loss)
    autograd_gradients(twin, x, y, task, Penalty())
    assert_same_grads(model, twin)


def test_single_neuron_is_an_affine_map_with_softmax_or_squared_loss():
    x, labels = make_data("classification", n=8, d=3, m=4, seed=8)
    model = FeedForward(3, [], 4, dtype=F64, seed=8)
    (layer,) = model.layers
    torch.testing.assert_close(model(x), x @ layer.weight + layer.bias, rtol=1e-13, atol=1e-14)
    logits = x @ layer.weight + layer.bias
    # multinomial logistic regression: -(1/n) sum_i log softmax(z_i)_{y_i}
    expected = -(logits.log_softmax(1)[torch.arange(8), labels]).mean()
    got = loss_function("classification")(model(x), labels)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-14)
    # linear regression: (1/n) sum_i ||z_i - y_i||^2
    targets = torch.randn(8, 4, generator=torch.Generator().manual_seed(9), dtype=F64)
    got = loss_function("regression")(model(x), targets)
    expected = ((logits - targets) ** 2).sum(1).mean()
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-14)


def test_single_neuron_trained_is_sklearns_multinomial_logistic_regression():
    """GD on the hand-written path reaches sklearn's l2-penalised multinomial logistic fit.

    sklearn minimises (1/2)||W||^2 + C sum_i loss_i; dividing by C n gives
    (1/n) sum_i loss_i + (1 / (2 C n)) ||W||^2, i.e. our l2 penalty with lam = 1 / (2 C n),
    intercept unpenalised in both.
    """
    from sklearn.linear_model import LogisticRegression

    n, d, m, c = 60, 4, 3, 0.05
    x, y = make_data("classification", n, d, m, seed=10)
    reference = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
    model = FeedForward(d, [], m, activation="identity", dtype=F64, seed=10)
    penalty = Penalty("l2", lam=1 / (2 * c * n))
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    for _ in range(400):
        opt.zero_grad()
        manual_gradients(model, x, y, "classification", penalty)
        opt.step()
    grad_norm = max(p.grad.abs().max().item() for p in model.parameters())
    assert grad_norm < 1e-9  # converged, not merely stopped
    (layer,) = model.layers
    np.testing.assert_allclose(layer.weight.detach().numpy().T, reference.coef_, atol=1e-7)
    np.testing.assert_allclose(layer.bias.detach().numpy(), reference.intercept_, atol=1e-7)


# --- initialisation ---------------------------------------------------------------------------


def test_relu_family_uses_he_and_saturating_ones_use_glorot():
    for name in ("relu", "leaky_relu", "elu"):
        assert ACTIVATIONS[name].init == "he", name
    for name in ("sigmoid", "tanh"):
        assert ACTIVATIONS[name].init == "glorot", name


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_initialisation_statistics_on_a_wide_layer(activation):
    fan_in, width, out = 800, 600, 200
    model = FeedForward(fan_in, [width], out, activation=activation, dtype=F64, seed=3)
    hidden_w, out_w = (w.detach() for w in model.weights())
    glorot_out = math.sqrt(6 / (width + out))
    if ACTIVATIONS[activation].init == "he":
        std = math.sqrt(2 / fan_in)
        assert hidden_w.std().item() == pytest.approx(std, rel=0.01)
        assert hidden_w.mean().item() == pytest.approx(0, abs=0.01 * std)
        # normal, not uniform: a uniform of this std would stop at sqrt(3) std
        assert hidden_w.abs().max().item() > 3.5 * std
    else:
        bound = math.sqrt(6 / (fan_in + width))
        assert hidden_w.abs().max().item() <= bound
        # 480k uniform draws: the largest is within 1e-4 of the bound (miss chance e^-48)
        assert hidden_w.abs().max().item() > 0.9999 * bound
        assert hidden_w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    # the output layer is Glorot uniform whatever the activation
    assert out_w.abs().max().item() <= glorot_out
    assert out_w.abs().max().item() > 0.9999 * glorot_out  # 120k draws: miss chance e^-12
    assert out_w.std().item() == pytest.approx(glorot_out / math.sqrt(3), rel=0.01)
    for b in model.biases():
        assert b.abs().max().item() == 0.0  # biases start at exactly zero


def test_same_seed_same_parameters_different_seed_different():
    a = FeedForward(4, [5, 3], 2, seed=11)
    b = FeedForward(4, [5, 3], 2, seed=11)
    c = FeedForward(4, [5, 3], 2, seed=12)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)  # determinism: bit-for-bit, by design
    for p, r in zip(a.weights(), c.weights(), strict=True):
        assert (p - r).abs().max() > 1e-3


def test_float32_and_float64_from_one_seed_agree_to_float32_precision():
    m32 = FeedForward(6, [9], 3, activation="sigmoid", seed=5, dtype=torch.float32)
    m64 = FeedForward(6, [9], 3, activation="sigmoid", seed=5, dtype=F64)
    for p, q in zip(m32.parameters(), m64.parameters(), strict=True):
        assert p.dtype == torch.float32 and q.dtype == F64
        torch.testing.assert_close(p.double(), q, rtol=2**-23, atol=0)
    # ... and the float64 net keeps its float64 draws rather than float32-rounded copies of them
    w64 = m64.weights()[0].detach()
    assert (w64 - w64.float().double()).abs().max() > 0


# --- bad constructor input --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"activation": "swish"}, "model.activation"),
        ({"hidden": [0]}, "model.hidden"),
        ({"hidden": [4, -2]}, "model.hidden"),
        ({"hidden": [2.5]}, "model.hidden"),
        ({"backend": "jax"}, "model.backend"),
        ({"activation": "leaky_relu", "activation_param": -0.1}, "model.activation_param"),
        ({"activation": "elu", "activation_param": float("nan")}, "model.activation_param"),
        ({"activation": "relu", "activation_param": 0.1}, "model.activation_param"),
        ({"in_features": 0}, "model.in_features"),
        ({"out_features": -1}, "model.out_features"),
    ],
)
def test_bad_constructor_input_names_the_key(kwargs, key):
    args = {"in_features": 3, "hidden": [4], "out_features": 2, **kwargs}
    with pytest.raises(ConfigError) as info:
        FeedForward(**args)
    assert info.value.key == key
    assert key in str(info.value)


def test_with_backend_refuses_unknown_backend():
    with pytest.raises(ConfigError) as info:
        FeedForward(3, [4], 2).with_backend("jax")
    assert info.value.key == "model.backend"


def test_activation_param_reaches_the_forward():
    x = -torch.ones(1, 2, dtype=F64)
    model = FeedForward(2, [3], 1, activation="leaky_relu", activation_param=0.3, dtype=F64)
    _, (z,) = model.forward_with_preactivations(x)
    h = torch.where(z > 0, z, 0.3 * z)
    out = model.layers[-1]
    torch.testing.assert_close(model(x), h @ out.weight + out.bias, rtol=1e-13, atol=1e-14)


# --- one gradient-descent step, by hand -------------------------------------------------------


def tiny_net() -> tuple[FeedForward, torch.Tensor, torch.Tensor]:
    """x = [[1, 2]], y = [[0]]; hidden=[2] relu; W1 = [[0.5, -1], [0.25, 0.5]], W2 = [[1], [2]]."""
    model = FeedForward(2, [2], 1, activation="relu", dtype=F64)
    w1, w2 = model.weights()
    with torch.no_grad():
        w1.copy_(torch.tensor([[0.5, -1.0], [0.25, 0.5]]))
        w2.copy_(torch.tensor([[1.0], [2.0]]))
        for b in model.biases():
            b.zero_()
    return model, torch.tensor([[1.0, 2.0]], dtype=F64), torch.tensor([[0.0]], dtype=F64)


def step(model: FeedForward, x, y, penalty: Penalty, lr: float = 0.1) -> torch.Tensor:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    loss = manual_gradients(model, x, y, "regression", penalty)
    opt.step()
    penalty.proximal_step_(opt, penalty.parameters(model))
    return loss


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def assert_params(model: FeedForward, w1, b1, w2, b2) -> None:
    (l1, l2) = model.layers
    for got, want in ((l1.weight, w1), (l1.bias, b1), (l2.weight, w2), (l2.bias, b2)):
        torch.testing.assert_close(got.detach(), t(want), rtol=0, atol=1e-14)


def test_one_sgd_step_by_hand():
    model, x, y = tiny_net()
    # Forward (row vector times W, W stored (in, out)):
    #   z1 = x W1 + b1 = [1*0.5 + 2*0.25, 1*(-1) + 2*0.5] = [1, 0]
    #   h  = relu(z1) = [1, 0]; relu'(z1) = [1, 0], because relu'(0) = 1{0 > 0} = 0 (the kink)
    #   pred = h W2 + b2 = 1*1 + 0*2 = 1;  loss = (1/n) ||pred - y||^2 = (1 - 0)^2 / 1 = 1
    # Backward:
    #   dpred = 2 (pred - y) / n = 2
    #   dW2 = h^T dpred = [[1*2], [0*2]] = [[2], [0]];   db2 = [2]
    #   dh  = dpred W2^T = [2*1, 2*2] = [2, 4]
    #   dz1 = dh * relu'(z1) = [2, 0]
    #   dW1 = x^T dz1 = [[1*2, 1*0], [2*2, 2*0]] = [[2, 0], [4, 0]];   db1 = [2, 0]
    # Step, eta = 0.1:
    #   W1 = [[0.5 - 0.2, -1 - 0], [0.25 - 0.4, 0.5 - 0]] = [[0.3, -1], [-0.15, 0.5]]
    #   b1 = [0 - 0.2, 0 - 0] = [-0.2, 0]
    #   W2 = [[1 - 0.2], [2 - 0]] = [[0.8], [2]];   b2 = [0 - 0.2] = [-0.2]
    _, (z1,) = model.forward_with_preactivations(x)
    torch.testing.assert_close(z1.detach(), t([[1.0, 0.0]]), rtol=0, atol=0)  # exact kink
    loss = step(model, x, y, Penalty())
    torch.testing.assert_close(loss, t(1.0), rtol=0, atol=1e-14)
    (l1, l2) = model.layers
    for p, g in (
        (l1.weight, [[2.0, 0.0], [4.0, 0.0]]),
        (l1.bias, [2.0, 0.0]),
        (l2.weight, [[2.0], [0.0]]),
        (l2.bias, [2.0]),
    ):
        torch.testing.assert_close(p.grad, t(g), rtol=0, atol=1e-14)
    assert_params(model, [[0.3, -1.0], [-0.15, 0.5]], [-0.2, 0.0], [[0.8], [2.0]], [-0.2])


def test_one_sgd_step_by_hand_with_l2_penalty():
    model, x, y = tiny_net()
    # Same data loss and gradients as above; g(w) = lam ||W||^2 with lam = 0.5, weights only.
    #   penalty gradient = 2 lam W = W;  biases get nothing.
    #   dW1 = [[2, 0], [4, 0]] + [[0.5, -1], [0.25, 0.5]] = [[2.5, -1], [4.25, 0.5]]
    #   dW2 = [[2], [0]] + [[1], [2]] = [[3], [2]];  db1 = [2, 0], db2 = [2] as before
    # Step, eta = 0.1:
    #   W1 = [[0.5 - 0.25, -1 + 0.1], [0.25 - 0.425, 0.5 - 0.05]] = [[0.25, -0.9], [-0.175, 0.45]]
    #   W2 = [[1 - 0.3], [2 - 0.2]] = [[0.7], [1.8]];  b1 = [-0.2, 0], b2 = [-0.2]
    # Objective before the step: 1 + 0.5 (0.25 + 1 + 0.0625 + 0.25 + 1 + 4) = 1 + 3.28125
    penalty = Penalty("l2", lam=0.5)
    value = penalty.value(penalty.parameters(model))
    torch.testing.assert_close(value, t(3.28125), rtol=0, atol=1e-14)
    step(model, x, y, penalty)
    assert_params(model, [[0.25, -0.9], [-0.175, 0.45]], [-0.2, 0.0], [[0.7], [1.8]], [-0.2])


def test_one_sgd_step_by_hand_with_l1_proximal():
    model, x, y = tiny_net()
    # Proximal l1, lam = 2: the gradient step ignores the l1 term, so it lands where the plain
    # step did: W1 = [[0.3, -1], [-0.15, 0.5]], W2 = [[0.8], [2]], b1 = [-0.2, 0], b2 = [-0.2].
    # Then soft-threshold the weights (not biases) by eta lam = 0.1 * 2 = 0.2:
    #   w <- sign(w) max(|w| - 0.2, 0)
    #   W1 = [[0.1, -0.8], [0 (|-0.15| < 0.2: exactly zero), 0.3]],  W2 = [[0.6], [1.8]]
    #   biases are not penalised: b1 = [-0.2, 0], b2 = [-0.2] unchanged by the prox.
    penalty = Penalty("l1", lam=2.0, method="proximal")
    step(model, x, y, penalty)
    assert_params(model, [[0.1, -0.8], [0.0, 0.3]], [-0.2, 0.0], [[0.6], [1.8]], [-0.2])
    assert model.layers[0].weight[1, 0].item() == 0.0  # an exact zero, not a small number


# --- the layer loop's parameters --------------------------------------------------------------


def assert_layer_parameters_are_the_registered_ones(model: FeedForward) -> None:
    pairs = model.layer_parameters()
    assert len(pairs) == len(model.layers)
    for (weight, bias), layer in zip(pairs, model.layers, strict=True):
        assert weight is layer.weight and bias is layer.bias


def test_layer_parameters_follow_to_load_state_dict_and_copies():
    model = FeedForward(3, [4, 5], 2, seed=0)
    assert_layer_parameters_are_the_registered_ones(model)
    model.to(torch.float64)
    assert_layer_parameters_are_the_registered_ones(model)
    assert model.layer_parameters()[0][0].dtype == F64
    state = {k: v + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(state)  # in place: the same Parameter objects
    assert_layer_parameters_are_the_registered_ones(model)
    model.load_state_dict(state, assign=True)  # new Parameter objects
    assert_layer_parameters_are_the_registered_ones(model)
    torch.testing.assert_close(model.layer_parameters()[0][0], state["layers.0.weight"])
    assert_layer_parameters_are_the_registered_ones(model.with_backend("autograd"))
    assert FeedForward(3, [4], 2, bias=False).layer_parameters()[0][1] is None


def test_forward_reads_the_tensors_functional_call_puts_in_place():
    """torch.func swaps tensors into the registries: a cached parameter list would ignore them."""
    model = FeedForward(3, [4], 2, seed=0).double()
    x = torch.randn(5, 3, dtype=F64)
    zeros = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for twin in (model, model.with_backend("autograd")):
        out = torch.func.functional_call(twin, zeros, (x,))
        torch.testing.assert_close(out, torch.zeros(5, 2, dtype=F64))
