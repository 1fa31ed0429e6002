import itertools
import math

import numpy as np
import pytest
import torch

from shiftserve_train.models import LSTMClassifier, TTLSTM, TTLinear, clamped_ranks, max_bond_ranks
from shiftserve_train.reference import tt_apply


def densify(cores, in_modes, out_modes):
    """The matrix of docs/format.md, element by element from the definition (test only)."""
    d = len(in_modes)
    rows, cols = math.prod(out_modes), math.prod(in_modes)
    w = np.zeros((rows, cols))
    for i_idx in itertools.product(*[range(n) for n in in_modes]):
        for j_idx in itertools.product(*[range(m) for m in out_modes]):
            v = np.ones((1, 1))
            for k, i in enumerate(i_idx):
                v = v @ cores[k][:, i, :]
            for k, j in enumerate(j_idx):
                v = v @ cores[d + k][:, j, :]
            col = int(np.ravel_multi_index(i_idx, in_modes))
            row = int(np.ravel_multi_index(j_idx, out_modes))
            w[row, col] = v[0, 0]
    return w


@pytest.mark.parametrize("in_modes,out_modes,ranks", [([3, 4], [2, 5], [2, 3, 2]), ([2, 3, 2], [2, 2, 3], 2),
                                                      ([6], [4], [3])])
def test_tt_linear_equals_its_dense_matrix(in_modes, out_modes, ranks):
    torch.manual_seed(0)
    tt = TTLinear(in_modes, out_modes, ranks, bias=True)
    with torch.no_grad():
        tt.bias.normal_()
    cores = [c.detach().double().numpy() for c in tt.cores]
    w = densify(cores, in_modes, out_modes)
    x = torch.randn(5, tt.in_features, dtype=torch.float64)
    y = tt.double()(x).detach().numpy()
    np.testing.assert_allclose(y, x.numpy() @ w.T + tt.bias.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tt_apply(cores, in_modes, out_modes, x.numpy()), x.numpy() @ w.T, rtol=1e-10,
                               atol=1e-12)


def test_tt_core_shapes_and_param_count():
    tt = TTLinear([4, 10], [8, 16], [3, 5, 3])
    assert [tuple(c.shape) for c in tt.cores] == [(1, 4, 3), (3, 10, 5), (5, 8, 3), (3, 16, 1)]
    assert tt.num_params() == 12 + 150 + 120 + 48 < 40 * 128
    with pytest.raises(ValueError):
        TTLinear([4, 10], [8, 16], [3, 5])


def test_tt_init_has_sensible_scale():
    torch.manual_seed(0)
    tt = TTLinear([8, 8], [16, 16], [4, 8, 4])
    w = densify([c.detach().double().numpy() for c in tt.cores], [8, 8], [16, 16])
    assert 0.3 / math.sqrt(3 * 64) < w.std() < 3 / math.sqrt(3 * 64)


def test_tt_lstm_matches_torch_lstm_with_dense_weights():
    torch.manual_seed(0)
    lstm = TTLSTM(6, 4, [2, 3], [4, 4], [2, 3, 2], [2, 2], [4, 4], 2)
    w_ih = densify([c.detach().double().numpy() for c in lstm.ih.cores], [2, 3], [4, 4])
    w_hh = densify([c.detach().double().numpy() for c in lstm.hh.cores], [2, 2], [4, 4])
    ref = torch.nn.LSTM(6, 4, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.from_numpy(w_ih))
        ref.weight_hh_l0.copy_(torch.from_numpy(w_hh))
        ref.bias_ih_l0.copy_(lstm.bias)
        ref.bias_hh_l0.zero_()
    x = torch.randn(3, 7, 6)
    torch.testing.assert_close(lstm(x), ref(x)[0], rtol=1e-5, atol=1e-6)


def test_max_bond_ranks_are_the_smaller_side_products():
    # modes 2,4,5 | 8,8,8: bond k separates prod(modes[:k]) from prod(modes[k:])
    assert max_bond_ranks([2, 4, 5], [8, 8, 8]) == [2, 8, 40, 64, 8]
    assert max_bond_ranks([4, 4, 8], [8, 8, 8]) == [4, 16, 128, 64, 8]
    assert clamped_ranks([2, 4, 5], [8, 8, 8], 15) == [2, 8, 15, 15, 8]
    assert clamped_ranks([4, 4, 8], [8, 8, 8], 15) == [4, 15, 15, 15, 8]


def test_clamping_a_bond_to_its_maximum_loses_nothing():
    # A matrix of any MPS with bonds above their maxima is reproduced exactly by the TT-SVD at the
    # clamped ranks.
    torch.manual_seed(0)
    lin = TTLinear([2, 3], [4, 2], ranks=[5, 6, 5], init_std=0.5)  # maxima are [2, 6, 2]
    with torch.no_grad():
        w = lin(torch.eye(6)).t()  # [8, 6]
    clamped = TTLinear([2, 3], [4, 2], ranks=clamped_ranks([2, 3], [4, 2], 6))
    assert clamped.ranks == [2, 6, 2]
    assert clamped.load_dense(w) < 1e-6
    with torch.no_grad():
        assert torch.allclose(clamped(torch.eye(6)).t(), w, atol=1e-5)


def test_load_dense_truncates_to_the_ranks():
    torch.manual_seed(1)
    w = torch.randn(64, 40)
    errs = []
    for r in (2, 8, 16, 40):
        lin = TTLinear([2, 4, 5], [4, 4, 4], ranks=clamped_ranks([2, 4, 5], [4, 4, 4], r))
        errs.append(lin.load_dense(w))
    # error shrinks with the rank and vanishes at full rank
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[0] > 0.5 and errs[3] < 1e-5
    # a low-rank matrix is recovered exactly once the middle bond reaches its rank
    lowrank = torch.randn(64, 3) @ torch.randn(3, 40)
    lin = TTLinear([2, 4, 5], [4, 4, 4], ranks=clamped_ranks([2, 4, 5], [4, 4, 4], 16))
    assert lin.load_dense(lowrank) < 1e-5
    with pytest.raises(ValueError):
        lin.load_dense(torch.randn(40, 64))


def test_dense_lstm_twin_starts_with_forget_bias_one():
    m = LSTMClassifier(12, 8, 5)
    b = (m.lstm.bias_ih_l0 + m.lstm.bias_hh_l0).detach()
    assert torch.equal(b[8:16], torch.ones(8))
