"""The inference engine computes what the training model computes (fp32 exactly, bf16 within
40 dB SI-SNR on real recordings), and --precision auto picks by measurement."""
import dataclasses

import numpy as np
import pytest
import torch

from birdsep import audio
from birdsep.pretrained import EXAMPLE_RECORDING, load_model
from birdsep.separation import engine as E
from birdsep.separation import runtime as R
from birdsep.separation.apply import BlockSettings, separate_array
from birdsep.separation.mixit import si_snr
from birdsep.separation.model import Separator, SeparatorConfig

TINY = SeparatorConfig(num_coeffs=24, bottleneck=16, hidden=24, repeats=2, blocks=5)  # dilations 1 … 16


def randomised(cfg: SeparatorConfig, seed: int = 0) -> Separator:
    """A separator whose norms, PReLU slopes and residual scales are all far from their
    initial values (negative gains included), so every folded term is exercised."""
    torch.manual_seed(seed)
    model = Separator(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "act" in name or name.endswith("scale"):
                p.copy_(torch.randn_like(p) * 0.7 + (0.3 if name.endswith("weight") else 0.0))
    return model


class _Wrapper(torch.nn.Module):
    """Another module holding a separator: the engine walks into it and fuses its layers."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, x):
        return self.model(x)


class _Plain(torch.nn.Module):
    """A separator made of layers the engine has no fused form for: it runs as it is."""

    def __init__(self, sources: int = 3):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, sources, 9, padding=4)

    def forward(self, x):  # (B, T) → (B, M, T)
        return self.conv(x[:, None])


def worst_si_snr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(si_snr(reference.double(), estimate.double()).min())


@pytest.mark.parametrize("consistency", ["uniform", "learned", "magsq", "none"])
@pytest.mark.parametrize("batch,length", [(1, 7001), (3, 4410), (1, 30), (2, 1)])
def test_fp32_engine_equals_the_model(consistency, batch, length):
    model = randomised(dataclasses.replace(TINY, consistency=consistency))
    x = torch.randn(batch, length)
    with torch.inference_mode():
        ref = model(x)
    out = E.Engine(model, torch.float32)(x)
    assert out.shape == ref.shape == (batch, 4, length)
    if length > 100:
        assert worst_si_snr(ref, out) > 70
    tol = 1e-4 if length > 100 else 1e-3  # a frame or two: zero variance, the norm amplifies rounding
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol / 10 * float(ref.abs().max()))


@pytest.mark.parametrize("kernel,sources", [(5, 2), (3, 8)])
def test_fp32_engine_other_shapes(kernel, sources):
    model = randomised(dataclasses.replace(TINY, kernel=kernel, num_sources=sources, window_ms=2.5, hop_ms=1.25))
    x = torch.randn(2, 9000)
    with torch.inference_mode():
        ref = model(x)
    assert worst_si_snr(ref, E.Engine(model, torch.float32)(x)) > 70


@pytest.mark.parametrize("consistency", ["uniform", "learned"])
@pytest.mark.parametrize("batch,length", [(1, 7001), (2, 3000), (1, 1)])
def test_fp32_engine_equals_the_stft_model(consistency, batch, length):
    cfg = SeparatorConfig(basis="stft", sample_rate=8000, window_ms=16.0, hop_ms=4.0, bottleneck=16, hidden=24,
                          repeats=2, blocks=5, consistency=consistency)
    model = randomised(cfg)
    x = torch.randn(batch, length)
    with torch.inference_mode():
        ref = model(x)
    out = E.Engine(model, torch.float32)(x)
    assert out.shape == ref.shape == (batch, 4, length)
    if length > 100:
        assert worst_si_snr(ref, out) > 70
    torch.testing.assert_close(out.sum(1), x, atol=1e-5, rtol=0)


def test_single_waveform_and_fallback_for_other_modules():
    model = randomised(TINY)
    x = torch.randn(5000)
    with torch.inference_mode():
        ref = model(x)
    assert E.Engine(model)(x).shape == (4, 5000)
    assert worst_si_snr(ref, E.Engine(model)(x)) > 70
    wrapped = E.engine_for(_Wrapper(model), "fp32")  # the layers are found wherever they sit
    assert set(wrapped.fused) == {"model.basis", "model.masknet"} and not wrapped.unfused
    torch.testing.assert_close(wrapped(x[None]), ref[None], rtol=1e-4, atol=1e-5)
    plain = _Plain()
    runner = E.engine_for(plain, "fp32")  # nothing to fuse: the module's own forward
    assert runner.fused == [] and runner.unfused == ["conv"]
    with torch.inference_mode():
        torch.testing.assert_close(runner(x[None]), plain(x[None]))
        y = E.engine_for(plain, "bf16")(x[None])  # autocast, the sum restored
    torch.testing.assert_close(y.sum(1), x[None], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        Separator(dataclasses.replace(TINY, kernel=2))


def real_audio(data_dir=None, seconds: float = 12.0) -> list[torch.Tensor]:
    """The bundled example, and when ../shared/data is there a dawn chorus excerpt."""
    clips = [audio.load(EXAMPLE_RECORDING, 22050)[0]]
    if data_dir is not None:
        x, _ = audio.load(data_dir / "soundscapes" / "pennsylvania" / "dawn_chorus_1min.flac", 22050, start=20,
                          duration=seconds)
        clips.append(x)
    return [torch.from_numpy(c)[None] for c in clips]


def test_bf16_engine_within_40_db_on_real_audio():
    model = load_model(None)
    for x in real_audio():
        with torch.inference_mode():
            ref = model(x)
        assert worst_si_snr(ref, E.Engine(model, torch.bfloat16)(x)) >= 40


def test_default_separation_within_40_db_of_fp32_reference(data_dir, monkeypatch):
    """What `birdsep separate` runs by default (precision auto) against the fp32 reference."""
    from birdsep.pretrained import probe_audio

    model = load_model(None)
    auto = BlockSettings(precision=R.resolve("cpu", "auto", model, probe_audio(22050)).precision)
    clips = real_audio(data_dir)
    gots = [separate_array(model, x[0].numpy(), 22050, auto) for x in clips]
    monkeypatch.setattr(E, "FUSIONS", {})  # the reference: the model's own forward, nothing fused
    reference = _Wrapper(model)
    for x, got in zip(clips, gots):
        want = separate_array(reference, x[0].numpy(), 22050, BlockSettings(precision="fp32"))
        assert worst_si_snr(torch.from_numpy(want), torch.from_numpy(got)) >= 40
        assert np.abs(got.sum(0) - x[0].numpy()).max() < 1e-4  # still sums to the input


def probe():
    from birdsep.pretrained import probe_audio

    return probe_audio(22050)


def test_auto_precision_is_measured(monkeypatch):
    model = load_model(None)
    R.forget(model)
    choice = R.choose_precision(model, "cpu", probe())
    assert choice["precision"] in ("fp32", "bf16")
    if choice["precision"] == "bf16":
        assert choice["si_snr_db"] >= R.MIN_SI_SNR_DB and choice["speedup"] >= R.MIN_SPEEDUP
    R.forget(model)
    monkeypatch.setattr(R, "MIN_SI_SNR_DB", 500.0)  # nothing is that accurate: fp32
    assert R.choose_precision(model, "cpu", probe())["precision"] == "fp32"
    R.forget(model)
    monkeypatch.setattr(R, "MIN_SI_SNR_DB", 0.0)
    monkeypatch.setattr(R, "MIN_SPEEDUP", 1000.0)  # nothing is that much faster: fp32
    assert R.choose_precision(model, "cpu", probe())["precision"] == "fp32"
    R.forget(model)


def test_engines_are_cached_per_model_and_precision():
    model = randomised(TINY)
    a, b = E.engine_for(model, "fp32"), E.engine_for(model, "bf16")
    assert a is E.engine_for(model, "fp32") and a is not b
    with pytest.raises(ValueError):
        E.engine_for(model, "fp16")


def test_auto_precision_remembered_on_disk(monkeypatch, tmp_path):
    monkeypatch.setenv("BIRDSEP_CACHE", str(tmp_path))
    model = load_model(None)
    R.forget(model)
    calm = {"precision": "bf16", "si_snr_db": 68.0, "speedup": 1.6, "rounds": 1, "confident": True, "reason": "calm"}
    monkeypatch.setattr(R, "_measure", lambda *args: calm)
    first = R.choose_precision(model, "cpu", probe())
    assert R.choices_file().is_file() and first == calm
    R.forget(model)

    def no_measuring(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(R, "_measure", no_measuring)
    again = R.choose_precision(model, "cpu", probe())  # read back, not re-measured, and says so
    assert again["precision"] == "bf16" and again["reason"].startswith("calm (remembered from")
    R.forget(model)
    other = randomised(TINY)  # other weights: another key, so it is measured
    with pytest.raises(AssertionError, match="measured again"):
        R.choose_precision(other, "cpu", probe())
    R.forget(model)


def test_auto_precision_in_doubt_is_not_remembered(monkeypatch, tmp_path):
    """A measurement in doubt (a speed-up near the threshold, or a busy machine) is repeated; a
    speed-up still near the threshold is remembered (the two are about as fast), while noisy
    timings are measured afresh by the next process instead of pinned on disk."""
    monkeypatch.setenv("BIRDSEP_CACHE", str(tmp_path))
    model = load_model(None)
    R.forget(model)
    ticks = iter(range(10**6))
    fast = {"fp32": 1.0, "bf16": 1.0 / R.MIN_SPEEDUP}  # exactly at the threshold: in doubt

    class Timed:
        def __init__(self, precision):
            self.precision = precision

        def __call__(self, x):  # (1, T) → (1, 4, T): the same sources in both precisions
            return x.reshape(1, 1, -1).repeat(1, 4, 1)

    monkeypatch.setattr(E, "engine_for", lambda m, p, d="cpu": Timed(p))
    monkeypatch.setattr(R, "_time", lambda engine, x: fast[engine.precision] * (1 + 1e-9 * next(ticks)))
    choice = R.choose_precision(model, "cpu", probe())
    assert choice["rounds"] == R.ROUNDS and choice["confident"] and "about as fast" in choice["reason"]
    assert R.choices_file().is_file()
    R.choices_file().unlink()
    R.forget(model)
    noisy = iter([1.0, 1.0, 2.0, 2.0, 2.0, 2.0] * 10**5)  # most timings twice the best: a busy machine
    monkeypatch.setattr(R, "_time", lambda engine, x: fast[engine.precision] * next(noisy))
    choice = R.choose_precision(model, "cpu", probe())
    assert choice["rounds"] == R.ROUNDS and not choice["confident"] and "noisy" in choice["reason"]
    assert not R.choices_file().exists()
    R.forget(model)
    monkeypatch.setattr(R, "_time", lambda engine, x: fast[engine.precision] * (1 + 1e-9 * next(ticks)))
    fast["bf16"] = 1.0 / 1.6  # a clear speed-up: one round, remembered
    choice = R.choose_precision(model, "cpu", probe())
    assert choice == {**choice, "precision": "bf16", "rounds": 1, "confident": True}
    assert R.choices_file().is_file()
    R.forget(model)


def test_settle_is_the_one_place_device_and_precision_are_decided():
    """runtime.settle: what the commands, the API, the page and each Ray worker call."""
    from birdsep.errors import UsageError

    given = R.Runtime("cpu", "bf16", "measured before")
    loaded = []
    model, rt = R.settle("auto", "auto", load=lambda device: loaded.append(device) or "model", given=given)
    assert (model, rt, loaded) == ("model", given, ["cpu"])  # loaded on the given device, nothing measured again
    assert R.settle("cpu", "bf16") == (None, R.Runtime("cpu", "fp32", "no separator"))
    tiny = randomised(TINY)
    assert R.settle("cpu", "fp32", model=tiny) == (tiny, R.Runtime("cpu", "fp32", "fp32 as asked"))
    model, rt = R.settle("cpu", "bf16", load=lambda device: tiny)
    assert model is tiny and rt == R.Runtime("cpu", "bf16", "bf16 as asked")
    with pytest.raises(UsageError, match="unknown precision"):
        R.settle("cpu", "fp16", model=tiny)


@pytest.mark.parametrize("length", [1000, 1024, 1025, 96077])
def test_fused_stft_synthesis_is_torch_istft(length):
    """The fused inverse STFT (irfft per frame, shifted adds, the kept envelope) gives what
    ``torch.istft`` gives, to fp32 rounding, and with unit masks gives the input back; a second
    call reuses the envelope."""
    from birdsep.separation.engine import FusedSTFTBasis
    from birdsep.separation.layers import STFTBasis

    basis = STFTBasis(window=1024, hop=256, compression=0.3)
    fused = FusedSTFTBasis(basis, torch.float32)
    x = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    padded = basis.pad(x)
    coeffs, _ = basis.analyse(padded)
    masks = torch.rand(2, 3, *coeffs.shape[1:], generator=torch.Generator().manual_seed(1))
    want = basis.synthesise(masks, coeffs, padded.shape[-1])
    got = fused.synthesise(masks, coeffs, padded.shape[-1])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    ones = fused.synthesise(torch.ones(2, 1, *coeffs.shape[1:]), coeffs, padded.shape[-1])[:, 0, :length]
    torch.testing.assert_close(ones, x, rtol=0, atol=1e-5)
    assert len(fused._envelopes) == 1


def test_measuring_precision_on_one_thread_leaves_the_process_thread_count(monkeypatch, tmp_path):
    """``--precision auto`` times the engines as blocks run (one PyTorch thread); PyTorch's count is
    the process's, so it is put back after."""
    monkeypatch.setenv("BIRDSEP_CACHE", str(tmp_path))
    model = randomised(TINY)
    R.forget(model)
    seen = []
    real = R._measure_here
    monkeypatch.setattr(R, "_measure_here", lambda *a: (seen.append(torch.get_num_threads()), real(*a))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        R.choose_precision(model, "cpu", probe())
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        R.forget(model)
