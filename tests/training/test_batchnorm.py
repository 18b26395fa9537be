import pytest
import torch
from torch import nn

from mtdp_core.backbones import create_backbone
from mtdp_core.training.batchnorm import adapt_batch_norm, batch_norm_layers, freeze_batch_norm


def _pretrained_like(seed=0):
    """resnet18 whose BN layers have non-trivial statistics and affine parameters."""
    torch.manual_seed(seed)
    model = create_backbone("resnet18", weights="random", seed=seed)
    with torch.no_grad():
        for _, bn in batch_norm_layers(model):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.2)
    return model.eval()


def _batches(n=4, seed=0, shift=1.5, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    # A "new domain": inputs far from what the statistics were estimated on.
    return [torch.randn(6, 3, 40, 40, generator=g) * scale + shift for _ in range(n)]


def test_outputs_in_eval_mode_are_unchanged():
    model = _pretrained_like()
    probe = _batches(1, seed=9)[0]
    before = model(probe)
    stats = adapt_batch_norm(model, _batches())
    assert stats["layers"] == 20 and stats["batches"] == 4 and stats["samples"] == 24 and stats["mean_shift"] > 0.1
    assert not model.training
    torch.testing.assert_close(model(probe), before, rtol=1e-4, atol=1e-4)


def test_new_statistics_are_those_of_the_data():
    model = _pretrained_like()
    batches = _batches()
    inputs = {}
    hook = model.bn1.register_forward_pre_hook(lambda m, i: inputs.setdefault("x", []).append(i[0].detach()))
    model(torch.cat(batches))
    hook.remove()
    x = torch.cat(inputs["x"]).transpose(0, 1).reshape(64, -1)
    adapt_batch_norm(model, batches)
    torch.testing.assert_close(model.bn1.running_mean, x.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn1.running_var, x.var(1, unbiased=True), rtol=1e-4, atol=1e-5)
    # Hence in train mode (batch statistics), the first batches of the new data give about
    # what the pre-trained network gave in eval mode: the point of the fix.
    probe = torch.cat(batches)
    reference = model.eval()(probe)
    model.train()
    with torch.no_grad():
        assert (model(probe) - reference).abs().mean() < 0.05 * reference.abs().mean()


def test_parameters_keep_their_identity_and_the_optimizer_still_works():
    model = _pretrained_like()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ids = [id(p) for p in model.parameters()]
    gamma_object = model.layer1[0].bn1.weight
    old_gamma = gamma_object.detach().clone()
    adapt_batch_norm(model, _batches())
    assert [id(p) for p in model.parameters()] == ids and model.layer1[0].bn1.weight is gamma_object
    adapted = gamma_object.detach().clone()
    assert not torch.allclose(adapted, old_gamma)
    model.train()
    optimizer.zero_grad()
    model(_batches(1)[0]).square().mean().backward()
    optimizer.step()
    assert not torch.equal(gamma_object.detach(), adapted)  # the optimizer updates the adapted parameter


def test_non_affine_layers_are_skipped_with_a_warning(caplog):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.BatchNorm2d(4)).eval()
    before = net[1].running_mean.clone()
    stats = adapt_batch_norm(net, _batches(2))
    assert stats["layers"] == 1 and torch.equal(net[1].running_mean, before)
    assert "skips 1" in caplog.text


def test_all_reduce_hook_pools_ranks():
    # Two "ranks" each seeing half of the batches, summed by all_reduce, give the statistics
    # of all the batches.
    batches = _batches(4)
    whole = _pretrained_like()
    adapt_batch_norm(whole, batches)
    shards = [_pretrained_like(), _pretrained_like()]
    captured = {}
    # "Rank 0" records its local sums; "rank 1"'s all_reduce adds them to its own.
    adapt_batch_norm(shards[0], batches[:2], all_reduce=lambda t: captured.setdefault("rank0", t.clone()))
    adapt_batch_norm(shards[1], batches[2:], all_reduce=lambda t: t.add_(captured["rank0"]))
    torch.testing.assert_close(
        shards[1].layer2[0].bn2.running_var, whole.layer2[0].bn2.running_var, rtol=1e-5, atol=1e-6
    )


def test_freeze_batch_norm():
    model = create_backbone("resnet18", weights="random").train()
    freeze_batch_norm(model)
    assert model.training and not model.bn1.training and model.layer1[0].conv1.training
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, before)


@pytest.mark.parametrize("arch", ["efficientnet_lite0"])
def test_other_architectures(arch):
    model = create_backbone(arch, weights="random").eval()
    probe = _batches(1, seed=3)[0]
    before = model(probe)
    adapt_batch_norm(model, _batches(2))
    torch.testing.assert_close(model(probe), before, rtol=1e-3, atol=1e-4)
