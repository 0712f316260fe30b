"""The networks: Omniglot's (shapes, batch statistics, functional transforms, per-step batch norm) and the MLP."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, jvp, vmap
from torch.nn import functional as F

from rlmaml.meta import meta_objective, model_loss, params_of
from rlmaml.supervised.models import MLP, BatchNorm, ConvNet, build_network, inner_param_names


def tasks(n: int, ways: int, shots: int, queries: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = lambda k: torch.arange(ways).repeat_interleave(k).expand(n, -1).clone()
    support = (torch.rand(n, ways * shots, 1, 28, 28, generator=g, dtype=dtype), labels(shots))
    query = (torch.rand(n, ways * queries, 1, 28, 28, generator=g, dtype=dtype), labels(queries))
    return support, query


def meta_gradient(model, support, query, batching: str, steps: int = 1, first_order: bool = False):
    params = params_of(model)
    loss = model_loss(model, F.cross_entropy)
    value = meta_objective(loss, loss, params, support, query, steps=steps, lr=0.4, first_order=first_order,
                           batching=batching)
    return value, torch.autograd.grad(value, list(params.values()))


def test_conv_net_maps_images_to_one_logit_per_way():
    assert ConvNet(5)(torch.rand(7, 1, 28, 28)).shape == (7, 5)


def test_conv_net_pools_64_features_by_default_and_256_when_flattened():
    assert ConvNet(5).head.in_features == 64
    flat = ConvNet(5, pool="flatten")
    assert flat.head.in_features == 256 and flat(torch.rand(3, 1, 28, 28)).shape == (3, 5)


def test_conv_net_has_four_stride_2_blocks_without_conv_bias():
    net = ConvNet(20)
    assert [c.stride for c in net.convs] == [(2, 2)] * 4
    assert all(c.bias is None and c.out_channels == 64 for c in net.convs)


def test_mlp_maps_images_to_one_logit_per_way_through_256_128_64_64():
    net = MLP(20)
    assert [layer.out_features for layer in net.layers] == [256, 128, 64, 64]
    assert net(torch.rand(4, 1, 28, 28)).shape == (4, 20)


def test_batch_norm_uses_batch_statistics_in_train_and_eval_mode():
    net = ConvNet(5)
    x = torch.rand(6, 1, 28, 28)
    train = net.train()(x)
    assert torch.equal(net.eval()(x), train)
    assert not torch.allclose(net(x[:3])[0], train[0])  # a sample's output depends on its batch
    assert not any(True for _ in net.buffers())  # no running statistics


def test_networks_run_under_grad_and_vmap():
    net = ConvNet(5)
    params = params_of(net)
    loss = model_loss(net, F.cross_entropy)
    (xs, ys), _ = tasks(3, 5, 1, 1)
    grads = vmap(grad(loss), in_dims=(None, 0))(params, (xs, ys))
    assert grads["convs.0.weight"].shape == (3, 64, 1, 3, 3)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_vmap_meta_objective_equals_the_loop_second_order(kind):
    torch.manual_seed(0)
    net = (ConvNet(5, hidden=8) if kind == "conv" else MLP(5, hidden=(32, 16))).double()  # small: float64 is slow
    support, query = tasks(2, 5, 1, 2, dtype=torch.float64)
    value_v, grads_v = meta_gradient(net, support, query, "vmap", steps=2)
    value_l, grads_l = meta_gradient(net, support, query, "loop", steps=2)
    torch.testing.assert_close(value_v, value_l, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads_v, grads_l, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_fused_and_composite_batch_norm_give_the_same_meta_gradient():
    support, query = tasks(2, 5, 1, 2, dtype=torch.float64)
    results = []
    for impl in ("fused", "composite"):
        torch.manual_seed(0)
        net = ConvNet(5, hidden=8, bn_impl=impl).double()
        results.append(meta_gradient(net, support, query, "loop", steps=2))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_per_step_batch_norm_selects_the_weights_of_the_step():
    torch.manual_seed(0)
    net = ConvNet(5, bn_steps=3)
    x = torch.rand(4, 1, 28, 28)
    assert net.norms[0].weight.shape == (3, 64)
    before = [net(x, step=i) for i in range(3)]
    with torch.no_grad():
        net.norms[0].bias[1] += 1.0
    after = [net(x, step=i) for i in range(3)]
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.allclose(before[1], after[1])
    assert torch.equal(net(x, step=7), after[2])  # later steps reuse the last set


def test_per_step_batch_norm_needs_a_step():
    with pytest.raises(ValueError, match="step"):
        MLP(5, bn_steps=2)(torch.rand(4, 1, 28, 28))


def test_per_step_batch_norm_runs_functionally_with_a_step():
    net = MLP(5, bn_steps=2)
    params = params_of(net)
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4) % 5
    g = grad(lambda p: F.cross_entropy(functional_call(net, p, (x,), {"step": 1}), y))(params)
    gamma = g["norms.0.weight"].detach()
    assert float(gamma[0].abs().sum()) == 0.0 and float(gamma[1].abs().sum()) > 0


def test_inner_param_names_can_leave_batch_norm_and_head_to_the_outer_loop():
    net = ConvNet(5)
    assert inner_param_names(net) == [name for name, _ in net.named_parameters()]
    without_bn = inner_param_names(net, adapt_bn=False)
    assert without_bn == ["convs.0.weight", "convs.1.weight", "convs.2.weight", "convs.3.weight",
                          "head.weight", "head.bias"]
    assert "head.weight" not in inner_param_names(net, adapt_head=False)


def test_unknown_network_kind_is_rejected():
    with pytest.raises(ValueError, match="'conv' or 'mlp'"):
        build_network("resnet", 5)


def test_batch_norm_rejects_an_unknown_implementation():
    with pytest.raises(ValueError, match="impl"):
        BatchNorm(4, impl="cudnn")


def test_mlp_relu_matches_torch_relu_in_value_gradient_and_hessian_vector_product() -> None:
    """networks.ReLU (clamp form, cheaper double backprop) is nn.ReLU to second order, away from exactly 0."""
    from rlmaml.networks import mlp

    torch.manual_seed(0)
    net = mlp(3, (16, 16), 2).double()
    reference = torch.nn.Sequential(*[torch.nn.ReLU() if isinstance(m, torch.nn.ReLU) else m for m in net])
    assert any(type(m) is not torch.nn.ReLU and isinstance(m, torch.nn.ReLU) for m in net)
    x = torch.randn(32, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in net.named_parameters()}
    v = {k: torch.randn_like(p) for k, p in params.items()}

    def loss(module: torch.nn.Module):
        return lambda p: (functional_call(module, p, (x,)) ** 2).sum()

    torch.testing.assert_close(net(x), reference(x))
    g, hv = jvp(grad(loss(net)), (params,), (v,))
    g_ref, hv_ref = jvp(grad(loss(reference)), (params,), (v,))
    for k in params:
        torch.testing.assert_close(g[k], g_ref[k])
        torch.testing.assert_close(hv[k], hv_ref[k])
