import torch

from shiftserve_train.models import resnet_cifar
from shiftserve_train.train import evaluate, fit, make_optimizer


def test_shift_resnet_learns_a_separable_task():
    """Class = which half of the image holds a bright square; a W3 shift ResNet must learn it."""
    g = torch.Generator().manual_seed(0)
    n = 256
    x = 0.3 * torch.randn(n, 1, 12, 12, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        r, c = int(torch.randint(0, 8, (1,), generator=g)), int(torch.randint(0, 2, (1,), generator=g))
        c0 = c + (6 if y[i] else 0)
        x[i, 0, r:r + 4, c0:c0 + 4] += 2.0
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]
    torch.manual_seed(0)
    model = resnet_cifar(depth=8, width=4, in_ch=1, num_classes=2, bits=3)
    before = {k: v.clone() for k, v in model.state_dict().items() if "weight_t" in k}
    hist = fit(model, batches, batches, epochs=6, lr=1e-2, progress=False, log=None)
    assert hist[-1]["val_acc"] > 0.9, hist
    changed = sum(int(((before[k] > 0) != (v > 0)).sum()) for k, v in model.state_dict().items() if k in before)
    assert changed > 0  # latents crossed zero: the codes were trained
    assert evaluate(model, batches, progress=False)["acc"] > 0.9


def test_optimizer_excludes_latents_from_weight_decay():
    model = resnet_cifar(depth=8, width=4, in_ch=1, num_classes=2)
    opt = make_optimizer(model, weight_decay=0.1)
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert all(p.dim() >= 1 for p in opt.param_groups[1]["params"])
