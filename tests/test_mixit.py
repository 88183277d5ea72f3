import itertools

import numpy as np
import pytest
import torch

from birdsep.separation.mixit import (active_sources, mixit_loss, momi, neg_snr_loss, pit_loss, si_snr,
                                      si_snr_improvement)


def brute_force(refs, srcs, snr_max=30.0):
    """Loop over every N^M assignment: the definition of MixIT."""
    b, n, _ = refs.shape
    m = srcs.shape[1]
    best = torch.full((b,), float("inf"), dtype=torch.float64)
    for choice in itertools.product(range(n), repeat=m):
        loss = 0
        for r in range(n):
            a = torch.tensor([c == r for c in choice], dtype=srcs.dtype)
            loss = loss + neg_snr_loss(refs[:, r], (a[None, :, None] * srcs).sum(1), snr_max)
        best = torch.minimum(best, loss.double())
    return best


@pytest.mark.parametrize("n, m", [(2, 2), (2, 4), (2, 8), (3, 4), (4, 4), (3, 5)])
def test_mixit_equals_brute_force(n, m):
    g = torch.Generator().manual_seed(10 * n + m)
    refs = torch.randn(5, n, 800, generator=g)
    # sources loosely related to the references so assignments matter
    srcs = torch.randn(5, m, 800, generator=g) * 0.5 + refs[:, torch.randint(0, n, (m,), generator=g)] / m
    loss, a = mixit_loss(refs, srcs)
    expected = brute_force(refs, srcs)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-4)
    assert a.shape == (5, n, m)
    assert torch.all(a.sum(1) == 1), "each source goes to exactly one mixture"


def test_as_many_references_as_outputs_forbids_a_split():
    """With N = M a reference's sound split over two outputs costs loss; with N = 2 it is free."""
    g = torch.Generator().manual_seed(3)
    birds = torch.randn(4, 2000, generator=g)  # four "recordings"
    half = torch.zeros(2000)
    half[:1000] = 1
    # outputs: bird 0 split in two (first and second half), birds 1 and 2 whole; bird 3 lost in output 0
    srcs = torch.stack([birds[0] * half + birds[3], birds[0] * (1 - half), birds[1], birds[2]])[None]
    two = torch.stack([birds[0] + birds[3], birds[1] + birds[2]])[None]
    assert mixit_loss(two, srcs)[0].item() == pytest.approx(-60.0, abs=1e-3)  # perfect for 2 references
    four = birds[None]
    whole = torch.stack([birds[0], birds[3], birds[1], birds[2]])[None]
    assert mixit_loss(four, whole)[0].item() == pytest.approx(-120.0, abs=1e-3)
    assert mixit_loss(four, srcs)[0].item() > -90.0  # the split now costs loss (two references far from 30 dB)


def test_too_many_assignments_is_refused():
    with pytest.raises(ValueError, match="assignments"):
        mixit_loss(torch.randn(1, 8, 100), torch.randn(1, 8, 100))


def test_recovers_planted_assignment():
    g = torch.Generator().manual_seed(1)
    srcs = torch.randn(3, 4, 1000, generator=g)
    planted = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 0]], dtype=torch.float32)
    refs = torch.stack([(planted[:, :, None] * srcs).sum(1), ((1 - planted)[:, :, None] * srcs).sum(1)], dim=1)
    loss, a = mixit_loss(refs, srcs)
    assert torch.equal(a[:, 0], planted)
    # perfect separation hits the 30 dB threshold on both mixtures: loss = 2 × (−30)
    torch.testing.assert_close(loss, torch.full((3,), -60.0), atol=1e-3, rtol=0)


def test_threshold_snr_hand_value():
    y = torch.tensor([1.0, 0.0, 0.0, 0.0])
    yhat = torch.tensor([0.9, 0.0, 0.0, 0.0])  # error energy 0.01 → SNR 20 dB
    assert neg_snr_loss(y, yhat, snr_max=None).item() == pytest.approx(-20.0, abs=1e-4)
    # τ = 10^-3: −10 log10(1 / (0.01 + 0.001)) = −19.586
    assert neg_snr_loss(y, yhat, snr_max=30.0).item() == pytest.approx(10 * np.log10(0.011), abs=1e-4)


def test_loss_gradient_flows():
    refs = torch.randn(2, 2, 300)
    srcs = torch.randn(2, 4, 300, requires_grad=True)
    loss, _ = mixit_loss(refs, srcs)
    loss.mean().backward()
    assert srcs.grad is not None and torch.isfinite(srcs.grad).all() and srcs.grad.abs().sum() > 0


def test_si_snr_scale_invariant_and_known_value():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(1000, generator=g)
    n = torch.randn(1000, generator=g)
    n = n - (n @ (s - s.mean())) / ((s - s.mean()) @ (s - s.mean())) * (s - s.mean())  # orthogonal to s
    n = n - n.mean()
    s = s - s.mean()
    n = n / n.norm() * s.norm() * 10 ** (-10 / 20)  # 10 dB below
    assert si_snr(s, s + n).item() == pytest.approx(10.0, abs=1e-3)
    assert si_snr(s, 7.0 * (s + n)).item() == pytest.approx(10.0, abs=1e-3)
    assert si_snr_improvement(s, s + n, s + 10 * n).item() == pytest.approx(20.0, abs=1e-3)


def test_momi_perfect_and_trivial():
    srcs = torch.randn(2, 4, 2000)
    refs = torch.stack([srcs[:, :2].sum(1), srcs[:, 2:].sum(1)], dim=1)
    assert torch.all(momi(refs, srcs) > 40)
    # sources that are all scaled copies of the input improve nothing (SI-SNR is scale invariant)
    trivial = refs.sum(1, keepdim=True).expand(-1, 4, -1) / 4
    torch.testing.assert_close(momi(refs, trivial), torch.zeros(2), atol=1e-3, rtol=0)


def test_active_sources():
    mix = torch.ones(1, 100)
    srcs = torch.stack([torch.ones(100) * 0.9, torch.ones(100) * 0.05, torch.ones(100) * 0.001, torch.zeros(100)])[None]
    # energies relative to the mixture: −0.9 dB, −26 dB, −60 dB, silent
    assert active_sources(srcs, mix, threshold_db=-20).item() == 1
    assert active_sources(srcs, mix, threshold_db=-30).item() == 2


def test_sparsity_loss_known_values():
    from birdsep.separation.mixit import sparsity_loss

    t = torch.linspace(0, 1, 1000)
    one = torch.stack([torch.sin(50 * t), 0 * t, 0 * t, 0 * t])[None]  # one active source of four
    equal = torch.stack([torch.sin(50 * t)] * 4)[None]
    two = torch.stack([torch.sin(50 * t), 0 * t, torch.sin(50 * t), 0 * t])[None]
    assert abs(float(sparsity_loss(one)) - 1.0) < 1e-3
    assert abs(float(sparsity_loss(equal)) - 2.0) < 1e-4  # √M
    assert abs(float(sparsity_loss(two)) - 2 ** 0.5) < 1e-3
    assert sparsity_loss(torch.randn(3, 8, 100)).shape == (3,)


def _pit_brute(refs: torch.Tensor, srcs: torch.Tensor, tau: float = 1e-3) -> float:
    """min over all M! one-to-one matchings of the summed pair costs, written out plainly."""
    x_pow = refs.sum(0).pow(2).sum()
    best = float("inf")
    for perm in itertools.permutations(range(len(srcs))):
        total = 0.0
        for i, j in enumerate(perm):
            if refs[i].pow(2).sum() <= 1e-10 * x_pow:  # a silent reference: the output should be silent
                total += float(10 * torch.log10(srcs[j].pow(2).sum() + tau * x_pow) - 10 * torch.log10(x_pow))
            else:
                total += float(neg_snr_loss(refs[i], srcs[j]))
        best = min(best, total)
    return best


@pytest.mark.parametrize("m", [3, 4])
def test_pit_loss_equals_brute_force_with_silent_references(m):
    g = torch.Generator().manual_seed(m)
    refs = torch.randn(5, m, 300, generator=g, dtype=torch.float64)
    refs[:, m - 1] = 0  # one absent source in every example
    refs[0, 1:] = 0  # and an example with a single source
    srcs = torch.randn(5, m, 300, generator=g, dtype=torch.float64)
    loss, perm = pit_loss(refs, srcs)
    assert loss.shape == (5,) and perm.shape == (5, m)
    for b in range(5):
        assert sorted(perm[b].tolist()) == list(range(m))  # one-to-one
        assert loss[b].item() == pytest.approx(_pit_brute(refs[b], srcs[b]), abs=1e-6)


def test_pit_loss_counts_a_split_that_mixit_forgives():
    """Known answer: perfect outputs in any order cost −SNRmax per reference (silent ones too);
    one source split in half over two outputs costs loss under PIT but none under MixIT of the
    two mixtures it belongs to."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1000, generator=g, dtype=torch.float64)
    refs = torch.stack([a, b, torch.zeros_like(a), torch.zeros_like(a)])[None]  # (1, 4, T)
    perfect = refs[:, [2, 0, 3, 1]]
    loss, perm = pit_loss(refs, perfect)
    assert loss.item() == pytest.approx(4 * -30.0, abs=0.01) and perm[0, :2].tolist() == [1, 3]
    split = torch.stack([a / 2, a / 2, b, torch.zeros_like(a)])[None]  # source a over outputs 1 and 2
    assert pit_loss(refs, split)[0].item() > loss.item() + 20
    mix_loss, _ = mixit_loss(refs[:, :2], split)  # MixIT over the two: the split remixes exactly
    assert mix_loss.item() == pytest.approx(2 * -30.0, abs=0.01)


def test_pit_loss_gradient_and_shape_check():
    refs = torch.randn(2, 3, 200, dtype=torch.float64)
    srcs = torch.randn(2, 3, 200, dtype=torch.float64, requires_grad=True)
    pit_loss(refs, srcs)[0].sum().backward()
    assert srcs.grad is not None and torch.isfinite(srcs.grad).all() and srcs.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ"):
        pit_loss(refs[:, :2], srcs)
