import numpy as np
import pytest
import torch

from shiftserve_train.quant import ActQuant, calibrate, qparams_from_range, quantize_u8, set_quant_mode
from shiftserve_train.reference import quantize_u8 as np_quantize_u8


def test_quantizer_rounds_half_to_even_and_clamps():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 300.0, -300.0, 1.2])
    q = quantize_u8(x, 1.0, 10)
    assert q.tolist() == [10, 12, 12, 10, 255, 0, 11]
    assert np_quantize_u8(x.numpy(), 1.0, 10).tolist() == q.tolist()


def test_qparams_always_contain_zero():
    s, zp = qparams_from_range(0.5, 4.0)  # all-positive range widened to [0, 4]
    assert zp == 0 and np.isclose(s, 4.0 / 255)
    s, zp = qparams_from_range(-1.0, 3.0)
    assert 0 < zp < 255
    assert quantize_u8(torch.tensor([0.0]), s, zp).item() == zp  # zero padding is exact
    assert qparams_from_range(0.0, 0.0) == (1.0, 0)


def test_fake_quant_matches_format_and_ste_mask():
    aq = ActQuant()
    aq.set_qparams(0.05, 20)
    aq.mode = "on"
    x = torch.linspace(-2, 14, 301, requires_grad=True)
    y = aq(x)
    q = quantize_u8(x.detach(), 0.05, 20).float()
    torch.testing.assert_close(y.detach(), (q - 20) * 0.05)
    y.sum().backward()
    inside = (x.detach() >= -20 * 0.05 - 0.025) & (x.detach() <= 235 * 0.05 + 0.025)
    assert torch.equal(x.grad.bool(), inside)


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_calibrate_sets_mode_and_range(method):
    model = torch.nn.Sequential(ActQuant())
    batches = [torch.randn(64) * 2 for _ in range(5)]
    calibrate(model, batches, method=method, progress=False)
    aq = model[0]
    assert aq.mode == "on" and bool(aq.calibrated)
    lo = min(float(b.min()) for b in batches)
    hi = max(float(b.max()) for b in batches)
    s, zp = aq.qparams()
    if method == "minmax":
        assert np.isclose(s, (hi - lo) / 255, rtol=1e-6)
    else:
        assert s <= (hi - lo) / 255 * (1 + 1e-6)
    set_quant_mode(model, "off")
    x = torch.randn(10)
    assert torch.equal(model(x), x)


def test_uncalibrated_quantizer_refuses_to_run():
    aq = ActQuant()
    aq.mode = "on"
    with pytest.raises(RuntimeError):
        aq(torch.zeros(3))
