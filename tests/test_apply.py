import numpy as np
import pytest
import torch

from birdsep.separation.apply import BlockSettings, align, fades, separate_array, separate_stream


class SplitModel(torch.nn.Module):
    """A stand-in separator: source 0 = x·g, source 1 = x·(1−g), where g is a per-block constant.

    With ``swap`` it randomly reorders its outputs per block, like a real separator may.
    """

    def __init__(self, swap: bool = False, m: int = 2):
        super().__init__()
        self.swap, self.m = swap, m
        self.calls = 0
        self.config = type("C", (), {"num_sources": m})

    def forward(self, x):  # (B, T) → (B, M, T)
        self.calls += 1
        out = torch.stack([x * 0.8, x * 0.2] + [torch.zeros_like(x)] * (self.m - 2), dim=1)
        if self.swap and self.calls % 2 == 0:
            out = out.flip(1)
        return out


class Identity(torch.nn.Module):
    config = type("C", (), {"num_sources": 1})

    def forward(self, x):
        return x.unsqueeze(1)


def test_fades_sum_to_one():
    fi, fo = fades(37)
    np.testing.assert_allclose(fi + fo, 1.0, atol=1e-7)
    assert fi[0] < 0.01 and fi[-1] > 0.99


@pytest.mark.parametrize("n", [1, 7, 99, 100, 101, 251, 1013])
def test_identity_reconstructs_any_length(n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    y = separate_array(Identity(), x, sample_rate=20, settings=BlockSettings(block_seconds=5.0, overlap=0.5))
    assert y.shape == (1, n)
    np.testing.assert_allclose(y[0], x, atol=1e-6)


def test_chunked_input_equals_whole_input():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    settings = BlockSettings(block_seconds=6.0, overlap=0.25)
    whole = separate_array(SplitModel(), x, 20, settings)
    chunks = [x[i:i + 37] for i in range(0, len(x), 37)]
    streamed = np.concatenate(list(separate_stream(SplitModel(), chunks, 20, settings)), axis=1)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    np.testing.assert_allclose(streamed.sum(0), x, atol=1e-5)


def test_alignment_undoes_swaps_across_blocks():
    x = np.abs(np.random.default_rng(1).standard_normal(2000)).astype(np.float32) + 0.1
    # one block at a time: the stand-in swaps by the order of its calls
    y = separate_array(SplitModel(swap=True, m=3), x, 10, BlockSettings(block_seconds=10.0, overlap=0.5, workers=1))
    # without alignment every other block would swap the 0.8 and 0.2 voices
    np.testing.assert_allclose(y[0], 0.8 * x, rtol=1e-5)
    np.testing.assert_allclose(y[1], 0.2 * x, rtol=1e-5)
    np.testing.assert_allclose(y.sum(0), x, rtol=1e-5)


def test_align_finds_permutation():
    rng = np.random.default_rng(2)
    prev = rng.standard_normal((4, 50))
    perm = np.array([2, 0, 3, 1])
    cur = np.empty_like(prev)
    cur[perm] = prev + 0.01 * rng.standard_normal((4, 50))
    np.testing.assert_array_equal(align(prev, cur), perm)


def test_align_uses_spectral_profile_when_overlap_is_silent():
    t = np.arange(4000) / 8000
    low = np.sin(2 * np.pi * 300 * t)  # a low voice
    high = np.sin(2 * np.pi * 3000 * t)  # a high voice
    from birdsep.separation.apply import band_power

    profiles = band_power(np.stack([low, high]))  # track 0 was low, track 1 high
    silent = np.zeros((2, 500))
    current = np.stack([high, low])  # the new block lists them the other way round
    np.testing.assert_array_equal(align(silent, silent, profiles, band_power(current)), [1, 0])


@pytest.mark.parametrize("m", [2, 3, 4, 8, 9])
def test_best_permutation_matches_scipy(m):
    from scipy.optimize import linear_sum_assignment

    from birdsep.separation.apply import best_permutation

    rng = np.random.default_rng(m)
    for _ in range(20):
        cost = rng.random((m, m))
        rows, cols = linear_sum_assignment(cost)
        perm = best_permutation(cost)
        assert sorted(perm) == list(range(m))
        assert cost[np.arange(m), perm].sum() == pytest.approx(cost[rows, cols].sum())


class Recording(torch.nn.Module):
    """A stand-in separator (sources 0.8·x and 0.2·x) that records, in ``Recording.seen`` (the
    engine runs a copy of the model), how many blocks it separates at once and with how many
    PyTorch threads."""

    seen: dict = {}

    def __init__(self):
        super().__init__()
        import threading

        self.config = type("C", (), {"num_sources": 2})
        Recording.seen = {"lock": threading.Lock(), "active": 0, "most": 0, "threads": set()}

    def forward(self, x):
        import time

        seen = Recording.seen
        with seen["lock"]:
            seen["active"] += 1
            seen["most"] = max(seen["most"], seen["active"])
            seen["threads"].add(torch.get_num_threads())
        time.sleep(0.03)
        with seen["lock"]:
            seen["active"] -= 1
        return torch.stack([x * 0.8, x * 0.2], dim=1)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_blocks_are_separated_by_workers_at_once_each_on_one_thread_in_order(workers):
    x = np.random.default_rng(3).standard_normal(2000).astype(np.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y = separate_array(Recording(), x, 20, BlockSettings(block_seconds=10.0, overlap=0.25, workers=workers))
        assert torch.get_num_threads() == 2  # the process's count is put back (the workers set it to 1)
    finally:
        torch.set_num_threads(before)
    assert Recording.seen["most"] == workers and Recording.seen["threads"] == {1}
    np.testing.assert_allclose(y[0], 0.8 * x, rtol=1e-5)  # blocks back in their order
    np.testing.assert_allclose(y[1], 0.2 * x, rtol=1e-5)


def test_block_workers_default_to_the_process_threads_on_the_cpu_one_elsewhere():
    from birdsep import threads

    assert BlockSettings().block_workers() == threads.count()
    assert BlockSettings(workers=3).block_workers() == 3
    assert BlockSettings(device="cuda", workers=3).block_workers() == 1
    with pytest.raises(ValueError):
        BlockSettings(workers=0)


def test_a_failing_block_raises_in_the_caller_and_stops_the_workers():
    class Failing(Recording):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("block failed")

    with pytest.raises(RuntimeError, match="block failed"):
        separate_array(Failing(), np.ones(2000, np.float32), 20, BlockSettings(block_seconds=10.0, workers=2))


def test_the_shipped_separators_tracks_do_not_depend_on_workers_or_threads():
    """Each block runs on one thread of its own: the tracks are the same to the last bit with 1 or
    3 blocks at once, whatever PyTorch's thread count in the caller."""
    from birdsep import audio
    from birdsep.pretrained import EXAMPLE_RECORDING, load_model

    model = load_model("separator_stft_m4")
    x, _ = audio.load(EXAMPLE_RECORDING, model.config.sample_rate)
    x = x[: 30 * model.config.sample_rate]  # 3 blocks
    before = torch.get_num_threads()
    try:
        runs = []
        for threads, workers in ((2, 1), (1, 3), (2, 2)):
            torch.set_num_threads(threads)
            runs.append(separate_array(model, x, model.config.sample_rate, BlockSettings(precision="bf16", workers=workers)))
    finally:
        torch.set_num_threads(before)
    for y in runs[1:]:
        np.testing.assert_array_equal(y, runs[0])
