import pytest
import torch
import torch.nn.functional as F

from mtdp_core.backbones import create_backbone
from mtdp_core.errors import ConfigurationError
from mtdp_core.multitask import MultiTaskModel, multitask_loss, rescale_head_grads

TASKS = {"alpha": 2, "beta": 5, "gamma": 3, "delta": 4}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MultiTaskModel(create_backbone("resnet18", weights="random"), TASKS, head_seed=1).train()


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    tasks = torch.tensor([0, 2, 0, 2, 1, 0][:n])
    labels = torch.tensor([1, 2, 0, 0, 4, 1][:n])
    return x, tasks, labels


def test_each_sample_gets_its_own_heads_logits(model):
    x, tasks, _ = _batch()
    logits = model(x, tasks)
    assert logits.shape == (6, 5)
    features = model.backbone(x)
    names = list(TASKS)
    for i, t in enumerate(tasks.tolist()):
        head = model.heads[names[t]]
        expected = head(features[i : i + 1])[0]
        torch.testing.assert_close(logits[i, : TASKS[names[t]]], expected, rtol=1e-5, atol=1e-6)
        assert torch.isinf(logits[i, TASKS[names[t]] :]).all()
    torch.testing.assert_close(model.task_logits(x, "gamma"), model.heads["gamma"](features))


def test_inactive_heads_produce_nothing_and_get_no_gradient(model):
    x, tasks, labels = _batch()  # tasks alpha, beta, gamma; no delta
    multitask_loss(model(x, tasks), labels).backward()
    assert model.heads["delta"].weight.grad is None and model.heads["delta"].bias.grad is None
    for name in ("alpha", "beta", "gamma"):
        assert model.heads[name].weight.grad is not None and model.heads[name].weight.grad.abs().sum() > 0
    # A head's gradient comes from its own samples only: alpha's equals the one computed
    # from alpha's samples alone (scaled by the same 1/B).
    alpha_grad = model.heads["alpha"].weight.grad.clone()
    model.zero_grad(set_to_none=True)
    features = model.backbone(x).detach()
    mask = tasks == 0
    (F.cross_entropy(model.heads["alpha"](features[mask]), labels[mask], reduction="sum") / 6).backward()
    torch.testing.assert_close(model.heads["alpha"].weight.grad, alpha_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_an_inactive_head_does_not_move_under_sgd_momentum(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    before = model.heads["delta"].weight.detach().clone()
    for seed in range(3):
        optimizer.zero_grad(set_to_none=True)
        x, tasks, labels = _batch(seed=seed)
        multitask_loss(model(x, tasks), labels).backward()
        optimizer.step()
    assert torch.equal(model.heads["delta"].weight, before)
    assert "momentum_buffer" not in optimizer.state[model.heads["delta"].weight]


def test_loss_is_eq1_by_hand(model):
    x, tasks, labels = _batch()
    logits = model(x, tasks)
    features = model.backbone(x)
    names = list(TASKS)
    total = 0.0
    for i, t in enumerate(tasks.tolist()):
        probabilities = torch.softmax(model.heads[names[t]](features[i]), dim=0)
        total = total - torch.log(probabilities[labels[i]])  # -Σ_k y_k log ŷ_k with one-hot y
    torch.testing.assert_close(multitask_loss(logits, labels), total / 6, rtol=1e-5, atol=1e-6)
    # Divided by the whole batch size B, not per task: here 3 alpha, 2 gamma, 1 beta samples.
    per_task_mean = sum(F.cross_entropy(logits[tasks == t], labels[tasks == t]) for t in (0, 1, 2)) / 3
    assert not torch.allclose(multitask_loss(logits, labels), per_task_mean)


def test_rescaling_makes_each_heads_gradient_a_mean_over_its_samples(model):
    x, tasks, labels = _batch()
    multitask_loss(model(x, tasks), labels).backward()
    grads = {n: model.heads[n].weight.grad.clone() for n in ("alpha", "beta", "gamma")}
    backbone_grad = model.backbone.conv1.weight.grad.clone()
    counts = torch.bincount(tasks, minlength=4)  # alpha 3, beta 1, gamma 2, delta 0
    rescale_head_grads(model, counts, batch_size=6)
    for name, count in (("alpha", 3), ("beta", 1), ("gamma", 2)):
        torch.testing.assert_close(model.heads[name].weight.grad, grads[name] * 6 / count)
    assert torch.equal(model.backbone.conv1.weight.grad, backbone_grad)  # backbone untouched
    assert model.heads["delta"].weight.grad is None
    # Equivalently: each head's gradient is that of the mean cross-entropy of its own samples.
    features = model.backbone(x).detach()
    head = model.heads["gamma"]
    mask = tasks == 2
    expected = torch.autograd.grad(F.cross_entropy(head(features[mask]), labels[mask]), head.weight)[0]
    torch.testing.assert_close(model.heads["gamma"].weight.grad, expected, rtol=1e-5, atol=1e-7)


def test_heads_are_seeded_and_state_dict_keys_are_readable():
    a = MultiTaskModel(create_backbone("resnet18", weights="random"), TASKS, head_seed=3)
    torch.manual_seed(123)  # the global RNG does not matter
    b = MultiTaskModel(create_backbone("resnet18", weights="random"), TASKS, head_seed=3)
    assert torch.equal(a.heads["beta"].weight, b.heads["beta"].weight)
    keys = a.state_dict().keys()
    assert "heads.beta.weight" in keys and "backbone.conv1.weight" in keys


def test_invalid_task_ids(model):
    x, tasks, _ = _batch()
    with pytest.raises(ConfigurationError, match="outside 0..3"):
        model(x, tasks + 3)
    with pytest.raises(ConfigurationError, match="one task index per sample"):
        model(x, tasks[:3])
