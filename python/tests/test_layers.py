import pytest
import torch

from shiftserve_train.layers import (
    ShiftConv2d,
    ShiftLinear,
    ShiftWeight,
    num_thermometer_latents,
    ste_binarize01,
    ste_sign,
)


def test_ste_forward_values_and_identity_gradients():
    t = torch.tensor([-2.0, -0.0, 0.0, 1e-9, 3.0], requires_grad=True)
    b = ste_binarize01(t)
    assert b.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    s = ste_sign(t)
    assert s.tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]  # sign(0) = +1 (w_sign >= 0)
    (b * torch.arange(5.0)).sum().backward()
    assert t.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("bits,values", [(2, {1, 2}), (3, {1, 2, 4, 8}), (4, {2 ** k for k in range(8)})])
def test_zero_free_value_sets(bits, values):
    torch.manual_seed(bits)
    w = ShiftWeight((4000,), bits, "zero_free")
    with torch.no_grad():
        for p in w.parameters():
            p.normal_()  # balanced latents -> every code appears
    v = w()
    assert set(v.abs().tolist()) == {float(x) for x in values}
    assert (v < 0).any() and (v > 0).any()
    assert torch.equal(v.detach().long(), w.int_values())


def test_w3_matches_paper_formula():
    torch.manual_seed(0)
    w = ShiftWeight((3000,), 3, "zero_free")
    with torch.no_grad():
        for p in w.parameters():
            p.normal_()
    b1, b2, b3 = ((getattr(w, f"weight_t{i}") > 0).float() for i in (1, 2, 3))
    p = ((b1 + 1) * b2 + 1) * b3
    s = torch.where(w.weight_sign >= 0, 1.0, -1.0)
    assert torch.equal(w().detach(), s * 2 ** p)


def test_w3_backward_is_the_sqrt_surrogate():
    torch.manual_seed(1)
    w = ShiftWeight((500,), 3, "zero_free")
    with torch.no_grad():
        for p in w.parameters():
            p.normal_()
    g = torch.randn(500)
    (w() * g).sum().backward()
    b1, b2, b3 = ((getattr(w, f"weight_t{i}") > 0).float() for i in (1, 2, 3))
    p = ((b1 + 1) * b2 + 1) * b3
    s = torch.where(w.weight_sign >= 0, 1.0, -1.0)
    dsurr_dp = s * 0.5 / torch.sqrt(p + 1)
    # identity STE through b_i:  dp/db3 = (b1+1)*b2+1, dp/db2 = (b1+1)*b3, dp/db1 = b2*b3
    torch.testing.assert_close(w.weight_sign.grad, g * torch.sqrt(p + 1))
    torch.testing.assert_close(w.weight_t3.grad, g * dsurr_dp * ((b1 + 1) * b2 + 1))
    torch.testing.assert_close(w.weight_t2.grad, g * dsurr_dp * (b1 + 1) * b3)
    torch.testing.assert_close(w.weight_t1.grad, g * dsurr_dp * b2 * b3)


def test_with_zero_values_and_gradient_flow():
    torch.manual_seed(2)
    w = ShiftWeight((4000,), 3, "with_zero")
    with torch.no_grad():
        for p in w.parameters():
            p.normal_()
    v = w()
    assert set(v.detach().tolist()) == {0.0, 1.0, -1.0, 2.0, -2.0, 4.0, -4.0}
    sign, m, vals = w.sign_and_exponent()
    assert not bool(((m == 0) & (sign == 1)).any())  # zeros never carry the sign bit
    assert torch.equal(vals, v.detach().long())
    v.sum().backward()
    assert w.weight_gate.grad.abs().sum() > 0


def test_latent_counts_and_low_variance_init():
    assert [num_thermometer_latents(b, "zero_free") for b in (2, 3, 4)] == [1, 3, 7]
    assert [num_thermometer_latents(b, "with_zero") for b in (2, 3, 4, 5)] == [0, 2, 6, 14]
    torch.manual_seed(0)
    w = ShiftWeight((64, 64, 3, 3), 3)
    std = w.weight_t1.std().item()
    assert 0.8e-3 < std < 1.2e-3
    with pytest.raises(ValueError):
        ShiftWeight((2,), 5, "zero_free")
    with pytest.raises(ValueError):
        ShiftWeight((2,), 3, "bogus")


@pytest.mark.parametrize("bits,code", [(2, "zero_free"), (3, "zero_free"), (4, "zero_free"),
                                       (3, "with_zero"), (5, "with_zero")])
def test_set_from_values_round_trip(bits, code):
    torch.manual_seed(bits)
    src = ShiftWeight((7, 9), bits, code)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    vals = src.int_values()
    dst = ShiftWeight((7, 9), bits, code)
    dst.set_from_values(vals)
    assert torch.equal(dst.int_values(), vals)
    with pytest.raises(ValueError):
        dst.set_from_values(torch.full((7, 9), 3))


def test_shift_conv_and_linear_use_power_of_two_weights():
    torch.manual_seed(0)
    conv = ShiftConv2d(3, 5, 3, stride=2, padding=1, bits=3)
    x = torch.randn(2, 3, 9, 9)
    ref = torch.nn.functional.conv2d(x, conv.weight.int_values().float(), None, 2, 1)
    torch.testing.assert_close(conv(x), ref)
    lin = ShiftLinear(6, 4, bits=2)
    x = torch.randn(3, 6)
    torch.testing.assert_close(lin(x), x @ lin.weight.int_values().float().T + lin.bias)
    assert set(conv.weight.int_values().abs().unique().tolist()) <= {1, 2, 4, 8}
