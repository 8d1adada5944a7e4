"""The DAM equations (sow.attention.equations) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from sow.attention import equations as mod
from sow.attention.regions import Regions
from sow.schemas import Box, Canvas, ModulationSettings

# -- decays ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "exponent", "expected"),
    [
        (0.0, 0.8, 1.0),
        (5.0, 0.8, 0.5**0.8),  # cos(1.5 pi) = 0
        (10.0, 0.8, 0.0),
        (12.0, 0.8, 0.0),  # clamped to T
        (-3.0, 0.5, 1.0),  # clamped to 0
        (2.5, 0.5, math.sqrt(0.5 * (1 + math.sqrt(2) / 2))),  # cos(1.75 pi) = sqrt(2)/2
    ],
)
def test_decay_closed_form(x, exponent, expected):
    assert float(mod.decay(x, 10.0, exponent)) == pytest.approx(expected, abs=1e-12)


def test_time_decays_as_configured():
    s = ModulationSettings()
    # cycle 3: cos(pi * 17 / 10) = cos(306 deg) = 0.5877852523
    base = 0.5 * (1 + 0.5877852522924731)
    assert mod.time_decay(3, s.t_time, s.a_time_minus) == pytest.approx(base**0.5, abs=1e-12)
    assert mod.time_decay(3, s.t_time, s.a_time_plus) == pytest.approx(base**0.8, abs=1e-12)
    assert mod.time_decay(0, s.t_time, s.a_time_plus) == 1.0
    assert mod.time_decay(7, s.t_time, s.a_time_plus, enabled=False) == 1.0
    # the P+ decay (a = 0.8) falls faster than the P- decay (a = 0.5) on (0, T)
    assert mod.time_decay(6, 10, 0.8) < mod.time_decay(6, 10, 0.5) < 1


@pytest.mark.parametrize("exponent", [0.5, 0.8, 2.0])
def test_time_decay_in_plain_numbers_equals_the_tensor_decay(exponent):
    """time_decay is written in Python floats (no scalar read per layer); it is the same g."""
    for cycle in range(-2, 14):
        assert mod.time_decay(cycle, 10.0, exponent) == pytest.approx(float(mod.decay(float(cycle), 10.0, exponent)), abs=1e-14)
        assert isinstance(mod.time_decay(cycle, 10.0, exponent), float)


def test_layer_grids_halve_rounding_up_and_match_layer_grid():
    assert mod.layer_grids(64, 64, 4) == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert mod.layer_grids(13, 7, 3) == [(13, 7), (7, 4), (4, 2)]
    for h, w in mod.layer_grids(13, 7, 4):
        assert mod.layer_grid(h * w, 13, 7) == (h, w)


def test_distance_decay_puts_the_farthest_cell_at_T():
    got = mod.distance_decay(torch.tensor([0.0, 5.0, 10.0, 20.0]), 10.0, 0.3)
    expected = [1.0, (0.5 * (1 + math.sqrt(2) / 2)) ** 0.3, 0.5**0.3, 0.0]
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    # scale-free: the same cells at twice the resolution (distances doubled) decay the same
    assert mod.distance_decay(torch.tensor([0.0, 10.0, 20.0, 40.0]), 10.0, 0.3).tolist() == pytest.approx(expected)
    assert mod.distance_decay(torch.tensor([3.0, 9.0]), 10.0, 0.3, enabled=False).tolist() == [1.0, 1.0]


# -- rows and the gate ----------------------------------------------------------------


def test_row_range_and_minmax():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    assert mod.row_range(logits).tolist() == [3.0, 0.0]
    assert torch.allclose(mod.minmax_normalize(logits), torch.tensor([[1 / 3, 1.0, 2 / 3, 0.0], [0.0] * 4]))


def test_closest_count_is_ceil_of_a_fifth():
    assert [mod.closest_count(m, 0.2) for m in (0, 1, 5, 6, 20, 21)] == [0, 1, 1, 2, 4, 5]


def _gate_logits(related_values: list[float], others: int = 5) -> torch.Tensor:
    """One condition query row: ``others`` keys at logit 0, then box_r's keys with the given logits."""
    return torch.tensor([[0.0] * others + related_values])


def test_gate_uniform_over_box_r_is_a_fifth_and_closed():
    related = torch.arange(5, 25)  # 20 points, already sorted by distance
    r_c = mod.relevance_gate(_gate_logits([1.0] * 20).unsqueeze(0), related, 0.2)
    assert float(r_c) == pytest.approx(0.2)
    assert mod.gate_factor(float(r_c), ModulationSettings().tau) == 0.0


def test_gate_concentrated_on_closest_fifth_is_open():
    related = torch.arange(5, 25)
    r_c = float(mod.relevance_gate(_gate_logits([2.0] * 4 + [0.0] * 16).unsqueeze(0), related, 0.2))
    assert r_c == pytest.approx(1.0)
    assert mod.gate_factor(r_c, 0.273) == pytest.approx(math.sqrt(1 - 0.273))
    # the same attention with box_r's points listed farthest first: nothing is close
    assert float(mod.relevance_gate(_gate_logits([2.0] * 4 + [0.0] * 16).unsqueeze(0), related.flip(0), 0.2)) == 0.0


def test_gate_is_the_mean_over_heads_of_query_averaged_ratios():
    related = torch.arange(5, 25)
    uniform = _gate_logits([1.0] * 20)
    focused = _gate_logits([2.0] * 4 + [0.0] * 16)
    # head 0 uniform; head 1: two query rows, one focused (ratio 1), one uniform: mean row
    # [0.5+0.5 x4, 0.5 x16] -> ratio 4 / (4 + 8) = 1/3
    head0 = torch.cat([uniform, uniform])
    head1 = torch.cat([focused, uniform])
    logits = torch.stack([head0, head1])  # (heads, n_c, N)
    assert float(mod.relevance_gate(logits, related, 0.2)) == pytest.approx((0.2 + 1 / 3) / 2)


def test_gate_factor_switches():
    assert mod.gate_factor(0.2, 0.273) == 0.0
    assert mod.gate_factor(0.5, 0.273) == pytest.approx(math.sqrt(0.227))
    assert mod.gate_factor(0.0, 0.273, use_gate=False) == 1.0


# -- the bias -------------------------------------------------------------------------

LOGITS_4x4 = torch.tensor(
    [
        [1.0, 3.0, 2.0, 0.0],  # C row, range 3
        [0.0, 2.0, 4.0, 1.0],  # R row, range 4
        [2.0, 2.0, 1.0, 0.0],  # R row, range 2
        [5.0, 1.0, 1.0, 1.0],  # untouched row
    ]
)
COND_Q = torch.tensor([True, False, False, False])
REL_Q = torch.tensor([False, True, True, False])
COND_K = torch.tensor([True, False, False, False])


def test_bias_hand_computed_4x4():
    bias = mod.dam_bias(LOGITS_4x4, COND_Q, REL_Q, COND_K, minus=0.5, plus=torch.tensor([0.0, 0.25, 0.5, 0.0]))
    expected = torch.tensor(
        [
            [0.0, -1.5, -1.5, -1.5],  # -0.5 * range 3 on keys outside C
            [1.0, 0.0, 0.0, 0.0],  # +0.25 * range 4 on the C key
            [1.0, 0.0, 0.0, 0.0],  # +0.5 * range 2 on the C key
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    assert torch.equal(bias, expected)


def test_bias_with_the_paper_constants():
    s = ModulationSettings()
    gate = mod.gate_factor(0.5, s.tau)
    cycle = 2
    minus = gate * s.w_minus * mod.time_decay(cycle, s.t_time, s.a_time_minus)
    g_dis = torch.tensor([0.0, 1.0, 0.5**s.a_dis, 0.0])
    plus = gate * s.w_plus * mod.time_decay(cycle, s.t_time, s.a_time_plus) * g_dis
    bias = mod.dam_bias(LOGITS_4x4, COND_Q, REL_Q, COND_K, minus=minus, plus=plus.float())
    assert bias[0, 1:].tolist() == pytest.approx([-minus * 3] * 3)
    assert bias[0, 0] == 0
    assert float(bias[1, 0]) == pytest.approx(float(plus[1]) * 4)
    assert float(bias[2, 0]) == pytest.approx(float(plus[2]) * 2)
    assert bias[1:3, 1:].abs().sum() == 0 and bias[3].abs().sum() == 0
    # signs: only (C -> not C) negative, only (R -> C) positive
    assert (bias[COND_Q][:, ~COND_K] < 0).all() and (bias[REL_Q][:, COND_K] > 0).all()


def test_layer_grid():
    assert mod.layer_grid(1024, 32, 32) == (32, 32)
    assert mod.layer_grid(256, 32, 32) == (16, 16)
    assert mod.layer_grid(12, 7, 5) == (4, 3)  # odd sides round up, like a stride-2 conv
    assert mod.layer_grid(1, 4, 4) == (1, 1)  # halved down to a single cell
    assert mod.layer_grid(1, 2, 1) == mod.layer_grid(1, 1, 2) == (1, 1)  # a side of 1 stays 1, the other halves
    with pytest.raises(ValueError, match="match no level"):
        mod.layer_grid(100, 32, 32)


def test_layer_regions_6x6():
    canvas = Canvas(width=96, height=96)  # 16-pixel cells on a 6x6 grid
    box_v = Box(x=16, y=16, w=32, h=32)  # cells (1..2, 1..2), centre (32, 32)
    box_r = Box(x=0, y=32, w=96, h=64)  # rows 2..5, overlapping box_v's lower row
    regions = Regions.build([box_v], [box_r], canvas, 6, 6, dis_horizon=10, dis_exponent=0.3)
    condition, related, decay = regions.conditions[0], regions.related[0], regions.related_decay[0]
    assert condition.tolist() == regions.condition_rows.tolist() == [7, 8, 13, 14]
    assert regions.tokens == 36
    # R = box_r minus C: rows 2..5 except cells 13, 14; sorted by distance to (32, 32)
    assert sorted(related.tolist()) == regions.related_rows.tolist() == [12, 15, 16, 17] + list(range(18, 36))
    first, last = related[0].item(), related[-1].item()
    assert first in (12, 15)  # (y 40, x 8 or 56): distance sqrt(8^2 + 24^2) = 25.30, the closest
    assert last == 35  # (y 88, x 88): the farthest
    far = math.hypot(56, 56)
    assert decay[0].item() == pytest.approx(float(mod.decay(10 * math.hypot(8, 24) / far, 10, 0.3)))
    assert decay[-1].item() == 0.0
    everything = torch.cat([condition, related, regions.untouched])
    assert sorted(everything.tolist()) == list(range(36))
    assert regions.untouched.tolist() == [0, 1, 2, 3, 4, 5, 6, 9, 10, 11] and regions.untouched.dtype == torch.long
    assert torch.nonzero(regions.condition_keys[0]).flatten().tolist() == [7, 8, 13, 14]
    assert torch.equal(regions.background_keys, 1 - regions.condition_keys[0])
    assert regions.condition_position[[7, 8, 13, 14]].tolist() == [0, 1, 2, 3] and regions.condition_position[12] == -1
    assert regions.related_position[[12, 15, 35]].tolist() == [0, 1, 21] and regions.related_position[7] == -1
    assert regions.condition_mask.shape == (6, 6) and regions.condition_mask.flatten()[[7, 8, 13, 14]].all()


def test_row_stats_and_column_sums_equal_their_dense_definitions():
    torch.manual_seed(0)
    q, k = torch.randn(3, 2, 7, 8), torch.randn(3, 2, 11, 8)
    logits = q @ k.transpose(-1, -2) * 0.3
    stats = mod.row_stats(q, k, 0.3, rows_per_chunk=2)  # 4 chunks
    torch.testing.assert_close(stats.range, mod.row_range(logits))
    torch.testing.assert_close(stats.low, logits.amin(-1))
    columns = torch.tensor([4, 0, 9])
    dense = mod.minmax_normalize(logits)[..., columns].sum(-2)
    torch.testing.assert_close(mod.normalized_column_sums(q, k[:, :, columns], stats, 0.3), dense, rtol=1e-5, atol=1e-5)


def test_biased_attention_equals_the_dense_biased_softmax():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, dtype=torch.float64) for _ in range(3))
    rows, rest = torch.tensor([1, 4, 5]), torch.tensor([0, 2, 3, 6, 7, 8, 9])
    keys_a = torch.tensor([1.0, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.float64)
    keys_b = 1 - keys_a
    coef_a, coef_b = torch.randn(2, 3, 3, dtype=torch.float64), torch.randn(2, 3, 3, dtype=torch.float64)
    got = mod.biased_attention(q, k, v, rows, rest, [mod.KeyBias(keys_a, coef_a), mod.KeyBias(keys_b, coef_b)], 8**-0.5)
    bias = torch.zeros(2, 3, 10, 10, dtype=torch.float64)
    bias[:, :, rows] = coef_a[..., None] * keys_a + coef_b[..., None] * keys_b
    expected = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5 + bias, -1) @ v
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
