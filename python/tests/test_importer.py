import pytest
import torch
import torch.nn as nn

from shiftserve_train.importer import (
    CheckpointImportError,
    LatentLayout,
    import_latent_checkpoint,
    torchvision_resnet_names,
)
from shiftserve_train.layers import ShiftConv2d
from shiftserve_train.models import resnet_cifar


def authors_checkpoint(model, seed=0, s3=False):
    """A state dict in the authors' latent parametrisation and torchvision key layout, built from
    the architecture alone (random latents; ``weight`` aliases ``weight_sign``; conv bias 0)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in model.named_modules():
        theirs = torchvision_resnet_names(name)
        if isinstance(mod, ShiftConv2d):
            shape = tuple(mod.weight.shape)
            sign = torch.randn(shape, generator=g)
            sd[f"{theirs}.weight"] = sign
            sd[f"{theirs}.weight_sign"] = sign
            keys = ["weight_val", "weight_shift", "weight_shift2"] if s3 else ["weight_t1", "weight_t2", "weight_t3"]
            for k in keys:
                sd[f"{theirs}.{k}"] = torch.randn(shape, generator=g)
            sd[f"{theirs}.bias"] = torch.zeros(shape[0])
        elif isinstance(mod, (nn.Conv2d, nn.Linear)):
            sd[f"{theirs}.weight"] = torch.randn(mod.weight.shape, generator=g)
            if mod.bias is not None:
                sd[f"{theirs}.bias"] = torch.randn(mod.bias.shape, generator=g)
        elif isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            sd[f"{theirs}.weight"] = torch.rand(n, generator=g) + 0.5
            sd[f"{theirs}.bias"] = torch.randn(n, generator=g)
            sd[f"{theirs}.running_mean"] = torch.randn(n, generator=g)
            sd[f"{theirs}.running_var"] = torch.rand(n, generator=g) + 0.5
            sd[f"{theirs}.num_batches_tracked"] = torch.tensor(100)
    return sd


def test_import_denseshift_w3_codes_follow_the_paper_formula():
    model = resnet_cifar(depth=8, width=4, in_ch=3, num_classes=10, bits=3)
    sd = authors_checkpoint(model)
    assert "layer2.0.downsample.0.weight_t3" in sd and "conv1.weight" in sd and "bn1.running_var" in sd
    rep = import_latent_checkpoint(model, {"state_dict": {"module." + k: v for k, v in sd.items()}},
                                   rename=torchvision_resnet_names)
    assert rep["shift_modules"] == 8 and rep["unused"] == []
    conv = model.stages[1][0].conv2
    pre = "layer2.0.conv2"
    b1, b2, b3 = ((sd[f"{pre}.weight_t{i}"] > 0).long() for i in (1, 2, 3))
    p = ((b1 + 1) * b2 + 1) * b3
    s = torch.where(sd[f"{pre}.weight_sign"] >= 0, 1, -1)
    assert torch.equal(conv.weight.int_values(), s * (1 << p))
    assert torch.equal(model.stem_bn.running_mean, sd["bn1.running_mean"])
    assert torch.equal(model.fc.weight, sd["fc.weight"])


def test_import_s3_with_zero():
    model = resnet_cifar(depth=8, width=4, in_ch=3, num_classes=10, bits=3, code="with_zero")
    sd = authors_checkpoint(model, s3=True)
    import_latent_checkpoint(model, sd, rename=torchvision_resnet_names)
    pre = "layer1.0.conv1"
    bin01 = lambda t: (t > 0).long()  # noqa: E731
    p = bin01(sd[f"{pre}.weight_shift"]) * (bin01(sd[f"{pre}.weight_shift2"]) + 1)
    s = torch.where(sd[f"{pre}.weight_sign"] >= 0, 1, -1)
    expect = s * bin01(sd[f"{pre}.weight_val"]) * (1 << p)
    assert torch.equal(model.stages[0][0].conv1.weight.int_values(), expect)


def test_import_custom_layout_and_strict_errors():
    model = resnet_cifar(depth=8, width=4, in_ch=3, num_classes=10, bits=3)
    sd = authors_checkpoint(model)
    renamed = {k.replace("weight_t", "bit"): v for k, v in sd.items()}
    import_latent_checkpoint(model, renamed, rename=torchvision_resnet_names,
                             layout=LatentLayout(thermometer=("bit1", "bit2", "bit3")))
    with pytest.raises(CheckpointImportError, match="no tensor"):
        import_latent_checkpoint(model, renamed, rename=torchvision_resnet_names)
    extra = dict(sd, **{"junk.weight": torch.zeros(1)})
    with pytest.raises(CheckpointImportError, match="unused"):
        import_latent_checkpoint(model, extra, rename=torchvision_resnet_names)
    assert import_latent_checkpoint(model, extra, rename=torchvision_resnet_names, strict=False)["unused"] == [
        "junk.weight"]
    bad = dict(sd)
    bad["layer1.0.conv1.weight_t1"] = torch.zeros(3)
    with pytest.raises(CheckpointImportError, match="shape"):
        import_latent_checkpoint(model, bad, rename=torchvision_resnet_names)
    nz = dict(sd)
    nz["layer1.0.conv1.bias"] = torch.ones(4)
    with pytest.raises(CheckpointImportError, match="bias"):
        import_latent_checkpoint(model, nz, rename=torchvision_resnet_names)
