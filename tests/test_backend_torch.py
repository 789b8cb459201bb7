"""TorchBackend: layer addressing, logits, head weights, ODIN, and leaving the user's model untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from oodscope.backends import INPUT, HeadNotLinearError, LayerNotFoundError, get_backend  # noqa: E402
from oodscope.backends.torch import TorchBackend  # noqa: E402
from oodscope.losses import MaxLogit, PredictedClassCE  # noqa: E402

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
)


# --- models -------------------------------------------------------------------------------------------------


def toy_convnet() -> nn.Sequential:
    """Leaves 0..8: conv, relu, pool, conv, relu, pool, flatten, dropout, linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(16 * 7 * 7, 10),
    )


class SoftmaxNet(nn.Module):
    """Returns probabilities; ``fc`` is registered before ``dropout`` although it is applied after it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU())
        self.fc = nn.Linear(32, 10)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.fc(self.dropout(self.features(x))), dim=1)


class Boom(nn.Module):
    """Identity that raises when armed: an exception inside the user's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom")
        return x


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), Boom())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.block(self.bn(self.conv(x)))).flatten(1))


def mixed_mode_bnnet() -> BNNet:
    """A trained-looking BNNet (non-trivial running stats) with only ``bn`` and ``block.1`` in train mode."""
    model = BNNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    model.bn.train()
    model.block[1].train()
    return model


class Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, 2 * x


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair()
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pair(x)
        return self.fc(a + b)


def images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 28, 28)).astype(np.float32)


def eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


def snapshot(model: nn.Module) -> dict:
    """Everything about the model that a pass must leave as it was."""
    return {
        "training": {name: module.training for name, module in model.named_modules()},
        "attributes": {name: sorted(vars(module)) for name, module in model.named_modules()},
        "hooks": {
            name: {key: len(getattr(module, key)) for key in HOOK_DICTS}
            for name, module in model.named_modules()
        },
        "state": {key: value.clone() for key, value in model.state_dict().items()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
    }


def assert_same_model_state(before: dict, model: nn.Module) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["attributes"] == before["attributes"]
    assert after["hooks"] == before["hooks"]
    assert all(count == 0 for counts in after["hooks"].values() for count in counts.values())
    assert after["requires_grad"] == before["requires_grad"]
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    assert all(p.grad is None for p in model.parameters())


# --- logits and layers --------------------------------------------------------------------------------------


def test_get_backend_picks_torch_backend():
    assert get_backend(toy_convnet()) is TorchBackend
    assert TorchBackend.framework == "torch"
    assert TorchBackend.channels_last is False


def test_logits_are_the_model_output_bit_for_bit():
    model, x = toy_convnet(), images()
    with torch.no_grad():
        expected = eval_copy(model)(torch.from_numpy(x)).numpy()
    with TorchBackend(model) as backend:
        logits, layers = backend.run_batch(x)
    assert layers == {}
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits, expected)


def test_layers_by_name_index_and_penultimate_match_a_manual_forward():
    model, x = toy_convnet(), images()
    ids = ["3", 3, -6, "7", -2, "penultimate", "0"]
    with TorchBackend(model, layer_ids=ids) as backend:
        logits, layers = backend.run_batch(x)
    assert list(layers) == ids
    reference = eval_copy(model)
    with torch.no_grad():
        conv2 = reference[:4](torch.from_numpy(x)).numpy()
        flat = reference[:8](torch.from_numpy(x)).numpy()
        conv1 = reference[:1](torch.from_numpy(x)).numpy()
    assert conv2.shape == (6, 16, 14, 14)
    for key in ("3", 3, -6):
        np.testing.assert_array_equal(layers[key], conv2)
    for key in ("7", -2, "penultimate"):
        np.testing.assert_array_equal(layers[key], flat)
    np.testing.assert_array_equal(layers["0"], conv1)
    weight, bias = backend.head_weights()
    np.testing.assert_allclose(layers["penultimate"] @ weight.T + bias, logits, rtol=1e-5, atol=1e-5)


def test_layer_names_and_leaf_names():
    backend = TorchBackend(SoftmaxNet(), head_layer_id="fc")
    assert backend.layer_names() == ["features", "features.0", "features.1", "features.2", "fc", "dropout"]
    assert backend.leaf_names() == ["features.0", "features.1", "features.2", "fc", "dropout"]
    assert TorchBackend(toy_convnet()).leaf_names() == [str(i) for i in range(9)]


def test_captured_activation_is_not_changed_by_a_later_inplace_op():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3))
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    with torch.no_grad():
        expected = model[0](torch.from_numpy(x)).numpy()
    assert (expected < 0).any()
    _, layers = TorchBackend(model, layer_ids=["0"]).run_batch(x)
    np.testing.assert_array_equal(layers["0"], expected)


def test_softmax_returning_model_gives_pre_softmax_logits_of_the_named_head():
    model, x = SoftmaxNet(), images()
    backend = TorchBackend(model, layer_ids=["penultimate", "features"], head_layer_id="fc")
    logits, layers = backend.run_batch(x)
    reference = eval_copy(model)
    with torch.no_grad():
        feats = reference.features(torch.from_numpy(x))
        by_hand = reference.fc(reference.dropout(feats)).numpy()
        probabilities = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(logits, by_hand)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), probabilities, rtol=1e-6)
    np.testing.assert_array_equal(layers["penultimate"], feats.numpy())
    np.testing.assert_array_equal(layers["features"], feats.numpy())
    weight, bias = backend.head_weights()
    np.testing.assert_array_equal(weight, model.fc.weight.detach().numpy())
    np.testing.assert_array_equal(bias, model.fc.bias.detach().numpy())


def test_integer_head_that_is_not_linear_warns():
    with pytest.warns(UserWarning, match="'dropout'.*head_layer_id='fc'"):
        TorchBackend(SoftmaxNet())


@pytest.mark.parametrize("softmax", [nn.Softmax(dim=1), nn.LogSoftmax(dim=1)])
def test_softmax_layer_head_uses_its_input_and_the_linear_before_it(softmax):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), softmax)
    x = np.random.default_rng(1).normal(size=(5, 3, 4)).astype(np.float32)
    backend = TorchBackend(model, layer_ids=["penultimate", -1])
    logits, layers = backend.run_batch(x)
    with torch.no_grad():
        linear_out = model[:2](torch.from_numpy(x)).numpy()
        output = model(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(logits, linear_out)
    np.testing.assert_array_equal(layers[-1], output)  # the softmax layer itself, when asked for
    np.testing.assert_array_equal(layers["penultimate"], x.reshape(5, 12))
    weight, bias = backend.head_weights()
    np.testing.assert_array_equal(weight, model[1].weight.detach().numpy())
    np.testing.assert_array_equal(bias, model[1].bias.detach().numpy())


def test_head_output_with_trailing_unit_axes_is_flattened_to_2d():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.AdaptiveAvgPool2d(1))
    x = images(3)
    logits, _ = TorchBackend(model, head_layer_id="1").run_batch(x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).flatten(1).numpy()
    assert logits.shape == (3, 3)
    np.testing.assert_array_equal(logits, expected)


# --- errors -------------------------------------------------------------------------------------------------


def test_unknown_layer_name_lists_names_and_how_to_address_them():
    with pytest.raises(LayerNotFoundError) as info:
        TorchBackend(toy_convnet(), layer_ids=["features.3"])
    message = str(info.value)
    assert "'features.3'" in message
    assert "'0', '1', '2'" in message and "'8'" in message
    assert "named_modules()" in message and "leaf modules" in message and "'penultimate'" in message


@pytest.mark.parametrize("bad", [9, -10, 100])
def test_out_of_range_index_raises_layer_not_found(bad):
    with pytest.raises(LayerNotFoundError, match=r"from -9 to 8"):
        TorchBackend(toy_convnet(), layer_ids=[bad])


def test_unknown_head_raises_layer_not_found():
    with pytest.raises(LayerNotFoundError, match="'classifier'"):
        TorchBackend(toy_convnet(), head_layer_id="classifier")
    with pytest.raises(ValueError, match="cannot be the head_layer_id"):
        TorchBackend(toy_convnet(), head_layer_id="penultimate")


@pytest.mark.parametrize("bad", [1.0, None, True, ("0",)])
def test_layer_id_of_wrong_type_raises_type_error(bad):
    with pytest.raises(TypeError, match="must be a module name"):
        TorchBackend(toy_convnet(), layer_ids=[bad])


def test_a_bare_id_instead_of_a_sequence_is_refused():
    with pytest.raises(TypeError, match=r"sequence of layer ids, e.g. \['penultimate'\]"):
        TorchBackend(toy_convnet(), layer_ids="penultimate")


def test_numpy_integer_ids_work_and_keep_their_key():
    key = np.int64(-2)
    _, layers = TorchBackend(toy_convnet(), layer_ids=[key]).run_batch(images(2))
    assert list(layers) == [key]
    assert layers[key].shape == (2, 16 * 7 * 7)


def test_tuple_output_layer_raises_a_clear_error():
    model = TupleNet()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'pair' \(Pair\) returned a tuple.*sub-module"):
        TorchBackend(model, layer_ids=["pair"]).run_batch(np.ones((2, 6), np.float32))
    assert_same_model_state(before, model)


def test_reused_module_and_module_that_never_runs_raise():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu, nn.Linear(3, 2))
    with pytest.raises(ValueError, match="'1' .*ran 2 times"):
        TorchBackend(model, layer_ids=["1"]).run_batch(np.ones((2, 3), np.float32))

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(3, 3)])
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.blocks[0](x))

    with pytest.raises(ValueError, match="'blocks' .*did not run"):
        TorchBackend(Unused(), layer_ids=["blocks"]).run_batch(np.ones((2, 3), np.float32))
    _, layers = TorchBackend(Unused(), layer_ids=["blocks.0"]).run_batch(np.ones((2, 3), np.float32))
    assert layers["blocks.0"].shape == (2, 3)


def test_entering_twice_is_refused():
    backend = TorchBackend(toy_convnet())
    with backend, pytest.raises(RuntimeError, match="already active"):
        backend.__enter__()


# --- the user's model is left as it was ---------------------------------------------------------------------


def test_pass_restores_mixed_training_flags_and_leaves_the_model_untouched():
    model, x = mixed_mode_bnnet(), images()
    before = snapshot(model)
    assert before["training"]["bn"] and before["training"]["block.1"] and not before["training"][""]
    reference = copy.deepcopy(model)
    with torch.no_grad():
        eval_logits = eval_copy(model)(torch.from_numpy(x)).numpy()
        torch.manual_seed(5)  # block.1 is a dropout in train mode
        expected_out = copy.deepcopy(reference)(torch.from_numpy(x))
    backend = TorchBackend(model, layer_ids=["bn", "penultimate", -1])
    with backend:
        assert not any(module.training for module in model.modules())
        assert len(model.bn._forward_hooks) == 1 and len(model.fc._forward_pre_hooks) == 1
        logits, layers = backend.run_batch(x)
        odin = perturbed_logits(backend, x, temperature=10.0, eps=0.01)
        edited = TorchBackend(model, edits={"bn": lambda t, ops: t * 0}).run_batch(x)[0]
    assert_same_model_state(before, model)  # running stats untouched: BN ran in eval mode
    np.testing.assert_array_equal(logits, eval_logits)
    assert odin.shape == edited.shape == logits.shape
    with torch.no_grad():
        torch.manual_seed(5)
        after_out = model(torch.from_numpy(x))
    assert torch.equal(after_out, expected_out)


def test_exception_in_the_users_forward_removes_hooks_and_restores_flags():
    model = mixed_mode_bnnet()
    before = snapshot(model)
    model.block[2].armed = True
    before["attributes"] = {name: sorted(vars(module)) for name, module in model.named_modules()}
    backend = TorchBackend(model, layer_ids=["bn", "penultimate"])
    with pytest.raises(RuntimeError, match="boom"), backend:
        backend.run_batch(images(2))
    with pytest.raises(RuntimeError, match="boom"):
        backend.run_batch(images(2))  # outside a with block: set up and undone around the call
    with pytest.raises(RuntimeError, match="boom"), backend:
        backend.gradients(images(2), PredictedClassCE(), (INPUT, "bn"))
    model.block[2].armed = False
    with pytest.raises(RuntimeError), backend:
        backend.run_batch(np.ones((2, 3, 28, 28), np.float32))  # wrong number of channels
    assert_same_model_state(before, model)


def test_failure_while_registering_hooks_undoes_the_half_done_set_up():
    class Fragile(nn.Identity):
        def register_forward_hook(self, *args, **kwargs):
            raise RuntimeError("cannot hook")

    model = nn.Sequential(nn.Linear(3, 3), Fragile(), nn.Linear(3, 2))
    model[0].train()
    before = snapshot(model)
    backend = TorchBackend(model, layer_ids=["0", "penultimate", "1"])
    with pytest.raises(RuntimeError, match="cannot hook"), backend:
        pass
    assert_same_model_state(before, model)
    assert not backend._active


def test_head_weights_need_no_pass_and_leave_no_trace():
    model = toy_convnet()
    before = snapshot(model)
    weight, bias = TorchBackend(model).head_weights()
    np.testing.assert_array_equal(weight, model[8].weight.detach().numpy())
    np.testing.assert_array_equal(bias, model[8].bias.detach().numpy())
    assert weight.shape == (10, 16 * 7 * 7) and bias.shape == (10,)
    weight[:] = 0  # a copy: the model's parameters are not views of the returned arrays
    assert model[8].weight.abs().sum() > 0
    assert_same_model_state(before, model)


def test_head_weights_without_bias_are_zeros():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    weight, bias = TorchBackend(model).head_weights()
    np.testing.assert_array_equal(weight, model[0].weight.detach().numpy())
    np.testing.assert_array_equal(bias, np.zeros(3, np.float32))


def test_non_linear_head_raises_head_not_linear():
    with pytest.raises(HeadNotLinearError, match=r"'3' is a Conv2d"):
        TorchBackend(toy_convnet(), head_layer_id="3").head_weights()
    with pytest.warns(UserWarning), pytest.raises(HeadNotLinearError, match=r"'2' is a ReLU"):
        TorchBackend(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Softmax(1))).head_weights()


# --- ODIN ---------------------------------------------------------------------------------------------------


def odin_by_hand(model: nn.Module, x: np.ndarray, temperature: float, eps: float, head=None) -> np.ndarray:
    model = eval_copy(model)
    logits_of = head if head is not None else model
    inputs = torch.from_numpy(x).requires_grad_(True)
    logits = logits_of(model, inputs) if head is not None else model(inputs)
    loss = F.cross_entropy(logits / temperature, logits.argmax(1), reduction="sum")
    (grad,) = torch.autograd.grad(loss, inputs)
    with torch.no_grad():
        perturbed = torch.from_numpy(x) - eps * torch.sign(grad)
        out = logits_of(model, perturbed) if head is not None else model(perturbed)
    return out.numpy()


def perturbed_logits(backend, x, temperature, eps):
    """ODIN's logits from the backend's primitives, as the planner computes them."""
    _, _, gradients = backend.gradients(x, PredictedClassCE(temperature), (INPUT,))
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return backend.run_batch(x - eps * np.sign(gradients[INPUT]))[0]


def test_a_gradient_pass_gives_the_plain_logits_and_layers():
    model, x = toy_convnet(), images()
    with TorchBackend(model, ["penultimate", 4]) as backend:
        plain, plain_layers = backend.run_batch(x)
        logits, layers, _ = backend.gradients(x, PredictedClassCE(1000.0), (INPUT,))
    np.testing.assert_array_equal(logits, plain)
    for key in ("penultimate", 4):
        np.testing.assert_array_equal(layers[key], plain_layers[key])


def test_odin_matches_a_manual_computation_and_leaves_gradients_alone():
    model, x = toy_convnet(), images()
    model[0].weight.requires_grad_(False)
    before = snapshot(model)
    temperature, eps = 1000.0, 0.01
    with TorchBackend(model) as backend:
        plain, _ = backend.run_batch(x)
        odin = perturbed_logits(backend, x, temperature=temperature, eps=eps)
    expected = odin_by_hand(model, x, temperature, eps)
    np.testing.assert_allclose(odin, expected, rtol=1e-6, atol=1e-6)
    assert np.abs(odin - plain).max() > 1e-3  # the perturbation did something
    assert_same_model_state(before, model)  # no .grad on any parameter, requires_grad flags unchanged


def test_odin_on_softmax_model_perturbs_along_pre_softmax_logits():
    model, x = SoftmaxNet(), images(4)
    temperature, eps = 2.0, 0.05
    odin = perturbed_logits(TorchBackend(model, head_layer_id="fc"), x, temperature, eps)

    def logits_of(net, inputs):
        return net.fc(net.dropout(net.features(inputs)))

    expected = odin_by_hand(model, x, temperature, eps, head=logits_of)
    np.testing.assert_allclose(odin, expected, rtol=1e-6, atol=1e-6)
    # ODIN raises the temperature-scaled confidence of the predicted class
    plain, _ = TorchBackend(model, head_layer_id="fc").run_batch(x)
    confidence = torch.softmax(torch.from_numpy(plain) / temperature, 1).max(1).values
    perturbed = torch.softmax(torch.from_numpy(odin) / temperature, 1).max(1).values
    assert (perturbed > confidence).all()


def test_odin_on_integer_inputs_is_refused():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3))
    with pytest.raises(TypeError, match="floating-point input"):
        TorchBackend(model).gradients(np.array([[1, 2]]), PredictedClassCE(), (INPUT,))
    # with respect to a layer's output, integer inputs are fine
    _, _, gradients = TorchBackend(model, ["1"]).gradients(np.array([[1, 2]]), MaxLogit(), ("1",))
    weight = model[2].weight.detach().numpy()
    logits = TorchBackend(model).run_batch(np.array([[1, 2]]))[0]
    np.testing.assert_allclose(gradients["1"], weight[logits.argmax(1)], rtol=1e-6)


def test_layer_gradients_equal_the_head_row_of_the_predicted_class():
    # d(sum of max logits) / d(penultimate) is the head's weight row of each sample's top class; the gradient
    # with respect to a layer before an in-place ReLU is that row where the unit is active
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    with TorchBackend(model, ["penultimate", "0"]) as backend:
        logits, layers, grads = backend.gradients(x, MaxLogit(), (INPUT, "penultimate", "0"))
    rows = model[2].weight.detach().numpy()[logits.argmax(1)]
    np.testing.assert_allclose(grads["penultimate"], rows, rtol=1e-6)
    np.testing.assert_allclose(grads["0"], rows * (layers["0"] > 0), rtol=1e-6)
    np.testing.assert_allclose(
        grads[INPUT], (rows * (layers["0"] > 0)) @ model[0].weight.detach().numpy(), rtol=1e-5
    )
    assert all(parameter.grad is None for parameter in model.parameters())


def test_layer_gradients_hold_across_batches_with_in_place_ops_and_frozen_weights():
    # a layer gradient is taken on the layer's output itself until an in-place op changes one; then that batch
    # and every later one go through an added zero tensor. Frozen weights (no autograd graph up to a layer)
    # take that way from the start. Each case gives the same gradients as a fresh backend.
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    for inplace in (False, True):
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 3))
        for frozen in (False, True):
            for parameter in model.parameters():
                parameter.requires_grad_(not frozen)
            with TorchBackend(model, ["0", "1"]) as backend:
                runs = [
                    backend.gradients(x[rows], MaxLogit(), ("0", "1")) for rows in (slice(3), slice(3, 6))
                ]
            logits = np.concatenate([run[0] for run in runs])
            layers = np.concatenate([run[1]["0"] for run in runs])
            rows = model[2].weight.detach().numpy()[logits.argmax(1)]
            np.testing.assert_allclose(np.concatenate([run[2]["1"] for run in runs]), rows, rtol=1e-6)
            np.testing.assert_allclose(
                np.concatenate([run[2]["0"] for run in runs]), rows * (layers > 0), rtol=1e-6
            )
            np.testing.assert_allclose(
                layers,
                x @ model[0].weight.detach().numpy().T + model[0].bias.detach().numpy(),
                rtol=1e-5,
                atol=1e-6,
            )


def test_edits_change_the_rest_of_the_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    weight, bias = (p.detach().numpy() for p in (model[2].weight, model[2].bias))
    plain, layers = TorchBackend(model, ["penultimate"]).run_batch(x)
    clip = {"penultimate": lambda t, ops: ops.native.clamp(t, max=0.2)}
    logits, edited = TorchBackend(model, ["penultimate"], edits=clip).run_batch(x)
    clipped = np.minimum(layers["penultimate"], 0.2)
    np.testing.assert_allclose(edited["penultimate"], clipped)  # a tap of the edited layer sees the edit
    np.testing.assert_allclose(logits, clipped @ weight.T + bias, rtol=1e-5)
    zeroed, _ = TorchBackend(model, edits={"1": lambda t, ops: t * 0}).run_batch(x)
    np.testing.assert_allclose(zeroed, np.broadcast_to(bias, zeroed.shape), rtol=1e-6)
    # a gradient through an edit: clipped units pass no gradient
    _, _, grads = TorchBackend(model, ["0"], edits=clip).gradients(x, MaxLogit(), ("0",))
    rows = weight[logits.argmax(1)] * ((layers["penultimate"] > 0) & (layers["penultimate"] < 0.2))
    np.testing.assert_allclose(grads["0"], rows, rtol=1e-6)
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        TorchBackend(model, edits={"1": lambda t, ops: t[:, :2]}).run_batch(x)
    assert TorchBackend.provides == {"edits", "gradients"}


# --- inputs and dtypes --------------------------------------------------------------------------------------


def test_numpy_and_tensor_inputs_give_the_same_results():
    model, x = toy_convnet(), images()
    backend = TorchBackend(model, layer_ids=["penultimate", 4])
    with backend:
        from_numpy = backend.run_batch(x)
        from_tensor = backend.run_batch(torch.from_numpy(x))
        from_float64 = backend.run_batch(x.astype(np.float64))  # cast to the model's float32
        read_only = x.copy()
        read_only.flags.writeable = False
        from_read_only = backend.run_batch(read_only)
    for other in (from_tensor, from_float64, from_read_only):
        np.testing.assert_array_equal(other[0], from_numpy[0])
        for key in ("penultimate", 4):
            np.testing.assert_array_equal(other[1][key], from_numpy[1][key])
    assert from_float64[0].dtype == np.float32


def test_float64_model_gets_float64_inputs_and_returns_float64():
    model, x = toy_convnet().double(), images()
    logits, layers = TorchBackend(model, layer_ids=["penultimate"]).run_batch(x)
    with torch.no_grad():
        expected = eval_copy(model)(torch.from_numpy(x).double()).numpy()
    assert logits.dtype == np.float64 and layers["penultimate"].dtype == np.float64
    np.testing.assert_array_equal(logits, expected)
    odin = perturbed_logits(TorchBackend(model), torch.from_numpy(x), temperature=1.0, eps=0.001)
    np.testing.assert_allclose(odin, odin_by_hand(model, x.astype(np.float64), 1.0, 0.001), rtol=1e-12)


def test_bfloat16_model_returns_float32_arrays():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(torch.bfloat16)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    logits, layers = TorchBackend(model, layer_ids=[0]).run_batch(x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    assert logits.dtype == np.float32 and layers[0].dtype == np.float32
    np.testing.assert_array_equal(logits, expected)


def test_integer_token_ids_keep_their_dtype():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3))
    ids = np.array([[1, 2], [3, 9]])
    logits, layers = TorchBackend(model, layer_ids=["penultimate"]).run_batch(ids)
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).numpy()
        embedded = model[:2](torch.from_numpy(ids)).numpy()
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(layers["penultimate"], embedded)


def test_model_without_parameters_or_submodules():
    with pytest.warns(UserWarning, match="not an nn.Linear"):
        backend = TorchBackend(nn.Flatten(), head_layer_id=-1)
    assert backend.layer_names() == [] and backend.leaf_names() == [""]
    logits, _ = backend.run_batch(np.ones((2, 1, 3), np.float64))
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits, np.ones((2, 3), np.float32))


class _TwoHeads(nn.Module):
    """A classifier with an auxiliary head registered after the real one."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.body, self.fc, self.aux = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"logits": self.fc(h), "aux": self.aux(h)} if self.as_dict else (self.fc(h), self.aux(h))


@pytest.mark.parametrize("as_dict", [True, False], ids=["dict", "tuple"])
def test_several_outputs_need_the_head_by_name(as_dict):
    model, x = _TwoHeads(as_dict), torch.rand(5, 4)
    with pytest.raises(ValueError, match=r"logits are ambiguous.*head_layer_id.*\['body', 'fc', 'aux'\]"):
        TorchBackend(model).run_batch(x)
    logits, _ = TorchBackend(model, head_layer_id="fc").run_batch(x)
    with torch.no_grad():
        expected = model.fc(torch.relu(model.body(x)))
    np.testing.assert_array_equal(logits, expected.numpy())
