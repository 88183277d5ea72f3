"""The architecture registry: a toy architecture, written and registered in this file only,
runs through `birdsep separate` and the inference engine; stored configs name their design."""
import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from birdsep.cli import main
from birdsep.pretrained import DEFAULT_SEPARATOR, EXAMPLE_RECORDING
from birdsep.separation import architectures as A
from birdsep.separation import engine as E
from birdsep.separation.layers import LearnedBasis, MaskingSeparator
from birdsep.separation.model import load_separator, save_model


@dataclass(frozen=True)
class ToyConfig:
    sample_rate: int = 16000
    num_sources: int = 3
    window: int = 32
    hop: int = 16
    coeffs: int = 24
    consistency: str = "uniform"
    clip_seconds: float = 2.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ToyConfig":
        return cls(**d)


class ToyMasks(nn.Module):
    """A mask network the engine has no fused form for: (B, N, F) → (B, M, N, F), None."""

    def __init__(self, n: int, m: int):
        super().__init__()
        self.m, self.conv = m, nn.Conv1d(n, n * m, 5, padding=2)

    def forward(self, features):
        b, n, f = features.shape
        return torch.sigmoid(self.conv(features)).view(b, self.m, n, f), None


class Toy(MaskingSeparator):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.config = cfg
        self.basis = LearnedBasis(cfg.window, cfg.hop, cfg.coeffs)  # a registered layer: fused
        self.masknet = ToyMasks(cfg.coeffs, cfg.num_sources)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(A, "_REGISTRY", dict(A._REGISTRY))  # registered for this test only
    A._load()
    return A.register(A.Architecture("toy", ToyConfig, Toy, presets={"toy-small": ToyConfig()},
                                     describe=lambda c: f"toy {c.window}/{c.hop}"))


def test_a_toy_architecture_separates_through_the_cli_and_the_engine(toy, tmp_path):
    torch.manual_seed(0)
    model = A.build(A.preset("toy-small"))
    assert isinstance(model, Toy) and A.of(model.config) is toy
    folder = save_model(model.eval(), tmp_path / "toy_model")
    stored = json.loads((folder / "config.json").read_text())["config"]
    assert stored["architecture"] == "toy"
    loaded = load_separator(folder)
    x = torch.randn(2, 3001)
    engine = E.Engine(loaded)
    assert engine.fused == ["basis"] and engine.unfused == ["masknet.conv"]
    with torch.inference_mode():
        torch.testing.assert_close(engine(x), loaded(x), rtol=1e-4, atol=1e-5)

    out = tmp_path / "out"
    assert main(["separate", str(EXAMPLE_RECORDING), "-o", str(out), "--model", str(folder), "--precision", "fp32",
                 "-q"]) == 0
    meta = json.loads((out / EXAMPLE_RECORDING.stem / "separation.json").read_text())
    tracks = [sf.read(out / EXAMPLE_RECORDING.stem / s["file"], dtype="float32")[0] for s in meta["sources"]]
    assert len(tracks) == 3
    extra = [sf.read(out / EXAMPLE_RECORDING.stem / meta["high_band"], dtype="float32")[0]] if meta["high_band"] else []
    mixture, rate = sf.read(EXAMPLE_RECORDING, dtype="float32", always_2d=True)
    assert meta["output_sample_rate"] == rate
    np.testing.assert_allclose(np.sum(tracks + extra, axis=0), mixture.mean(1), atol=2e-4)


def test_presets_and_names_are_one_registry():
    assert {"tdcnpp-learned", "tdcnpp-stft"} <= set(A.names())
    assert A.of(A.preset("stft")).name == "tdcnpp-stft" and A.of(A.preset("small")).name == "tdcnpp-learned"
    with pytest.raises(ValueError, match="unknown preset"):
        A.preset("huge")
    with pytest.raises(ValueError, match="unknown architecture"):
        A.from_stored({"architecture": "nope"})


def test_clashing_presets_are_refused(toy):
    with pytest.raises(ValueError, match="already"):
        A.register(A.Architecture("other", ToyConfig, Toy, presets={"toy-small": ToyConfig()}))


def test_configs_written_before_the_registry_still_load(tmp_path):
    """Folders written before configs named their architecture are read as the TDCN++ they are."""
    shipped = json.loads((DEFAULT_SEPARATOR / "config.json").read_text())
    assert shipped["config"]["architecture"] == "tdcnpp-stft"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "model.safetensors").write_bytes((DEFAULT_SEPARATOR / "model.safetensors").read_bytes())
    old = {k: v for k, v in shipped["config"].items() if k != "architecture"}
    (legacy / "config.json").write_text(json.dumps({**shipped, "config": old}))
    model = load_separator(legacy)
    assert A.of(model.config).name == "tdcnpp-stft"
    small = {k: v for k, v in A.to_stored(A.preset("small")).items() if k != "architecture"}
    assert A.of(A.from_stored(small)).name == "tdcnpp-learned"
