"""Mixture invariant training (MixIT) loss and separation metrics.

MixIT (Wisdom et al. 2020): given reference mixtures x (B, N, T) (the paper: N = 2) and
estimated sources ŝ (B, M, T), find the binary N×M assignment A (each source to exactly one
mixture) that minimises Σ_n L(x_n, [Aŝ]_n), with L the negative thresholded SNR.

The minimum over all N^M assignments is found without a Python loop over assignments and
without forming the 2^M remixes: every residual energy ‖x_n − Σ_m a_m ŝ_m‖² expands into
‖x_n‖² − 2 aᵀc_n + aᵀGa, with G the sources' M×M Gram matrix and c_n their correlations
with reference n, so all assignments are scored at once from (B, M, M) and (B, N, M)
tensors. The chosen assignment's loss is then recomputed directly in the time domain
(exact, and the gradient flows through it). This is written here because no library does
it vectorised (asteroid's MixITLossWrapper loops over the assignments).
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch

DEFAULT_SNR_MAX = 30.0
EPS = 1e-8


MAX_ASSIGNMENTS = 1 << 16  # N^M assignments scored at once (M = 8 sources with N ≤ 4 references)


@lru_cache(maxsize=16)
def _patterns(num_references: int, num_sources: int) -> torch.Tensor:
    """All N^M assignments as one-hot (K, N, M): [k, n, m] = 1 → source m goes to reference n."""
    rows = torch.tensor(list(itertools.product(range(num_references), repeat=num_sources)))  # (K, M)
    return torch.nn.functional.one_hot(rows, num_references).permute(0, 2, 1).double()


def neg_snr_loss(reference: torch.Tensor, estimate: torch.Tensor, snr_max: float | None = DEFAULT_SNR_MAX) -> torch.Tensor:
    """Negative thresholded SNR: −10 log10(‖y‖² / (‖y − ŷ‖² + τ‖y‖²)), τ = 10^(−SNRmax/10).

    reference, estimate (..., T) → (...). ``snr_max=None`` gives the plain negative SNR.
    """
    ref_pow = reference.pow(2).sum(dim=-1)
    err_pow = (reference - estimate).pow(2).sum(dim=-1)
    tau = 0.0 if snr_max is None else 10.0 ** (-snr_max / 10.0)
    return 10.0 * torch.log10(err_pow + tau * ref_pow + EPS) - 10.0 * torch.log10(ref_pow + EPS)


def _losses_from_energies(ref_pow: torch.Tensor, err_pow: torch.Tensor, snr_max: float | None) -> torch.Tensor:
    tau = 0.0 if snr_max is None else 10.0 ** (-snr_max / 10.0)
    return 10.0 * torch.log10(err_pow.clamp_min(0) + tau * ref_pow + EPS) - 10.0 * torch.log10(ref_pow + EPS)


def best_assignment(
    references: torch.Tensor, sources: torch.Tensor, snr_max: float | None = DEFAULT_SNR_MAX
) -> torch.Tensor:
    """The MixIT assignment for each example: references (B, N, T), sources (B, M, T) → A (B, N, M) in {0, 1},
    each source given to exactly one reference.

    Scores all N^M assignments at once through the Gram matrix (no gradient).
    """
    n_refs, n_srcs = references.shape[1], sources.shape[1]
    if n_refs ** n_srcs > MAX_ASSIGNMENTS:
        raise ValueError(f"{n_refs} references and {n_srcs} sources make {n_refs ** n_srcs} assignments "
                         f"(at most {MAX_ASSIGNMENTS})")
    with torch.no_grad():
        refs, srcs = references.double(), sources.double()
        gram = torch.einsum("bmt,bjt->bmj", srcs, srcs)  # (B, M, M)
        corr = torch.einsum("bnt,bmt->bnm", refs, srcs)  # (B, N, M)
        ref_pow = refs.pow(2).sum(-1)  # (B, N)
        p = _patterns(n_refs, n_srcs).to(srcs.device)  # (K, N, M)
        quad = torch.einsum("knm,bmj,knj->bkn", p, gram, p)  # (B, K, N): ‖Σ_m a_nm ŝ_m‖²
        err = ref_pow[:, None, :] - 2.0 * torch.einsum("bnm,knm->bkn", corr, p) + quad  # (B, K, N)
        total = _losses_from_energies(ref_pow[:, None, :], err, snr_max).sum(-1)  # (B, K)
        return p[total.argmin(dim=1)].to(sources.dtype)  # (B, N, M)


def mixit_loss(
    references: torch.Tensor, sources: torch.Tensor, snr_max: float | None = DEFAULT_SNR_MAX
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixIT loss. references (B, N, T), sources (B, M, T) → (loss (B,), assignment (B, N, M)).

    loss_b = min_A Σ_n L(x_n, [Aŝ]_n) summed over the N reference mixtures (the paper: N = 2);
    average it for a batch loss. With N = M every output must hold one whole reference, so a
    sound that a reference carries cannot be split over two outputs (see ``draw_mom``).
    """
    if references.shape[1] < 2:
        raise ValueError(f"MixIT needs at least 2 reference mixtures, got {references.shape[1]}")
    assignment = best_assignment(references, sources, snr_max)
    remixed = torch.bmm(assignment, sources)  # (B, N, T)
    return neg_snr_loss(references, remixed, snr_max).sum(dim=1), assignment


def pit_loss(
    references: torch.Tensor, sources: torch.Tensor, snr_max: float | None = DEFAULT_SNR_MAX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation-invariant loss with known sources, some of them silent (the supervised term of
    Wisdom et al. 2020's semi-supervised MixIT). references (B, M, T), as many as there are
    outputs, rows of zeros for absent sources; sources (B, M, T) → (loss (B,), permutation (B, M):
    the output matched to each reference).

    Each reference gets exactly one output: an active one costs L(r, ŝ) (negative thresholded
    SNR), a silent one 10 log10(‖ŝ‖² + τ‖x‖²) − 10 log10 ‖x‖² (x the input: the output is pushed
    to silence, relative to the input's level). loss_b sums the M terms. Unlike MixIT, a source
    split over two outputs costs loss: only one of them is matched to it. The best one-to-one
    matching is found with the Hungarian algorithm (scipy) on all M×M pair costs, computed from
    energies without a gradient; the chosen pairs are then recomputed in the time domain.
    """
    from scipy.optimize import linear_sum_assignment

    if references.shape != sources.shape:
        raise ValueError(f"references {tuple(references.shape)} and sources {tuple(sources.shape)} differ")
    tau = 0.0 if snr_max is None else 10.0 ** (-snr_max / 10.0)
    mix_pow = references.sum(1).pow(2).sum(-1)  # (B,)
    ref_pow = references.pow(2).sum(-1)  # (B, M)
    silent = ref_pow <= 1e-10 * mix_pow[:, None]  # (B, M)
    with torch.no_grad():
        refs, srcs = references.double(), sources.double()
        src_pow = srcs.pow(2).sum(-1)  # (B, M)
        corr = torch.einsum("bit,bjt->bij", refs, srcs)  # (B, M refs, M outputs)
        err = ref_pow.double()[:, :, None] - 2 * corr + src_pow[:, None, :]
        active = _losses_from_energies(ref_pow.double()[:, :, None], err, snr_max)
        quiet = (10.0 * torch.log10(src_pow[:, None, :] + tau * mix_pow.double()[:, None, None] + EPS)
                 - 10.0 * torch.log10(mix_pow.double()[:, None, None] + EPS)).expand_as(active)
        cost = torch.where(silent[:, :, None], quiet, active).cpu().numpy()  # (B, M, M)
    perm = torch.tensor(np.stack([linear_sum_assignment(c)[1] for c in cost]), device=sources.device)  # (B, M)
    matched = torch.gather(sources, 1, perm[:, :, None].expand_as(sources))  # (B, M, T): output for reference i
    quiet_loss = (10.0 * torch.log10(matched.pow(2).sum(-1) + tau * mix_pow[:, None] + EPS)
                  - 10.0 * torch.log10(mix_pow[:, None] + EPS))
    loss = torch.where(silent, quiet_loss, neg_snr_loss(references, matched, snr_max))  # (B, M)
    return loss.sum(dim=1), perm


def sparsity_loss(sources: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """ℓ1/ℓ2 ratio of the sources' RMS levels (Wisdom et al. 2021, "Sparse, efficient, and
    semantic mixture invariant training"): 1 when one source carries everything, √M when all
    are equally loud. Penalising it discourages spreading one sound over several outputs.
    sources (B, M, T) → (B,).
    """
    rms = sources.float().pow(2).mean(dim=-1).add(eps).sqrt()  # (B, M)
    return rms.sum(dim=-1) / rms.pow(2).sum(dim=-1).sqrt()


def si_snr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SNR in dB (zero-mean). (..., T) → (...)."""
    ref = reference - reference.mean(dim=-1, keepdim=True)
    est = estimate - estimate.mean(dim=-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + EPS)
    target = scale * ref
    noise = est - target
    return 10.0 * torch.log10((target.pow(2).sum(-1) + EPS) / (noise.pow(2).sum(-1) + EPS))


def si_snr_improvement(reference: torch.Tensor, estimate: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """SI-SNR(reference, estimate) − SI-SNR(reference, mixture). (..., T) → (...)."""
    return si_snr(reference, estimate) - si_snr(reference, mixture.expand_as(reference))


def momi(references: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """MoMi per example: mean SI-SNRi of the two estimated mixtures under the MixIT assignment.

    references (B, 2, T) (their sum is the MoM input), sources (B, M, T) → (B,) in dB.
    """
    assignment = best_assignment(references, sources)
    remixed = torch.bmm(assignment, sources)  # (B, 2, T)
    mom = references.sum(dim=1, keepdim=True)  # (B, 1, T)
    return si_snr_improvement(references, remixed, mom).mean(dim=1)


def active_sources(sources: torch.Tensor, mixture: torch.Tensor, threshold_db: float = -20.0) -> torch.Tensor:
    """Number of sources whose energy is within ``threshold_db`` of the mixture's. (B, M, T), (B, T) → (B,)."""
    src_pow = sources.pow(2).sum(-1)  # (B, M)
    mix_pow = mixture.pow(2).sum(-1, keepdim=True)  # (B, 1)
    return (10 * torch.log10((src_pow + EPS) / (mix_pow + EPS)) > threshold_db).sum(dim=1)
