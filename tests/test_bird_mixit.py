"""Google's bird MixIT separators converted from TensorFlow (birdsep.separation.architectures.bird_mixit,
birdsep.separation.tfcheckpoint): birdsep's converted model against TensorFlow running
google-research/sound-separation's own model code.

Fixtures (``tests/fixtures/bird_mixit``, made by ``benchmarks/bird_mixit_reference.py``, whose
docstring says how to make them again):

* ``small_m4/``: a reduced-size bird MixIT graph (M = 4, 32 coefficients, width 32/64, 3 repeats
  × 4 blocks with the skip connections), its TF checkpoint as a training run leaves it (Adam's
  slots, ``global_step`` 3223090, so the published file names) and TF's outputs on the shipped
  example at 4001 and 11031 samples;
* ``full_m4/``, ``full_m8/``: TF's outputs of the full-size graphs (M = 4 and 8, 256/256/512,
  4 × 8 blocks) on 22057 and 8821 samples. Their weights are not committed (35 MB each): every
  variable is drawn by the reference script's ``random_value(name, shape, seed)``, which this
  test calls to rebuild them. (The checkpoints TF wrote for them, with Adam's slots, are exactly
  as large as the published data files: 110,260,324 and 113,406,052 bytes.)

Measured when the fixtures were made: the reduced size matches TF to 97–103 dB SNR per source,
the full sizes to 79–83 dB (module and engine); the test requires 60 dB. To measure again, or
at another size, make a folder with the reference script and compare (``read_checkpoint`` +
``from_variables``, as ``test_converted_small_model_matches_tensorflow`` does).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from birdsep import modelstore
from birdsep.errors import UsageError
from birdsep.separation import tfcheckpoint
from birdsep.separation.architectures import bird_mixit
from birdsep.separation.engine import engine_for
from birdsep.separation.model import load_separator

FIXTURES = Path(__file__).parent / "fixtures" / "bird_mixit"
SMALL, FULL, FULL8 = FIXTURES / "small_m4", FIXTURES / "full_m4", FIXTURES / "full_m8"
INDEX = SMALL / "model.ckpt-3223090.index"
REFERENCE_SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bird_mixit_reference.py"
M4 = "bird_mixit_m4"
MIN_SNR_DB = 60.0


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """Per source: 10 log10(‖ref‖² / ‖ref − est‖²) of (M, T) arrays."""
    ref = reference.astype(np.float64)
    err = ref - estimate.astype(np.float64)
    return 10 * np.log10((ref ** 2).sum(-1) / np.maximum((err ** 2).sum(-1), 1e-30))


def reference(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input (T,), TF's output (M, T)) for each length in ``folder/reference.npz``."""
    data = np.load(folder / "reference.npz")
    lengths = json.loads((folder / "reference.json").read_text())["lengths"]
    return [(data[f"input_{n}"], data[f"output_{n}"]) for n in lengths]


def run(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)[None])[0].numpy()


@pytest.fixture(scope="module")
def small_model():
    tensors, cfg, step = bird_mixit.read_checkpoint(SMALL, M4)
    assert step == 3223090
    return bird_mixit.from_variables(tensors, cfg)


# ----------------------------------------------------------------------------- the reader


def test_the_reader_reads_what_tensorflow_wrote():
    info = json.loads((SMALL / "reference.json").read_text())
    entries = tfcheckpoint.read_index(INDEX)
    trainable = info["variables"]
    assert {n: list(entries[n].shape) for n in trainable} == trainable
    slots = {n for n in entries if n.endswith(("/Adam", "/Adam_1"))}
    assert len(slots) == 2 * len(trainable) and set(entries) - slots - set(trainable) == {
        "global_step", "beta1_power", "beta2_power"}
    tensors = tfcheckpoint.read(INDEX, {"global_step", "conv_encoder/dense/kernel"})
    assert tensors["global_step"].dtype == np.int64 and int(tensors["global_step"]) == 3223090
    kernel = tensors["conv_encoder/dense/kernel"]
    assert kernel.shape == (22, 32) and kernel.dtype == np.float32
    # the reference script's weights, drawn without TF, are what TF saved
    expected = _reference_script().random_value("conv_encoder/dense/kernel", (22, 32), info["seed"])
    np.testing.assert_array_equal(kernel, expected)


def test_the_reader_refuses_damaged_files_in_one_line(tmp_path):
    damaged = tmp_path / INDEX.name
    data = bytearray(INDEX.read_bytes())
    data[100] ^= 0xFF  # inside the first data block: its CRC-32C no longer matches
    damaged.write_bytes(bytes(data))
    with pytest.raises(tfcheckpoint.CheckpointError, match="block checksum mismatch") as err:
        tfcheckpoint.read_index(damaged)
    assert "\n" not in str(err.value) and str(damaged) in str(err.value)
    damaged.write_bytes(b"not a checkpoint at all" * 4)
    with pytest.raises(tfcheckpoint.CheckpointError, match="not a readable TensorFlow checkpoint index"):
        tfcheckpoint.read_index(damaged)
    assert tfcheckpoint.crc32c(b"123456789") == 0xE3069283  # the standard check value


# ----------------------------------------------------------------------------- equality with TensorFlow


def test_converted_small_model_matches_tensorflow(small_model):
    engine = engine_for(small_model, "fp32")
    assert "masknet" in engine.fused and "basis" in engine.fused
    for x, y in reference(SMALL):
        assert len(x) % 11 and len(x) % 2, "odd lengths, not multiples of the hop"
        for model in (small_model, engine):
            out = run(model, x)
            assert out.shape == y.shape
            assert snr_db(y, out).min() >= MIN_SNR_DB, snr_db(y, out)
            np.testing.assert_allclose(out.sum(0), x, atol=1e-5)  # the tracks sum to the input


@pytest.mark.parametrize("folder, preset", [(FULL, "bird-mixit-m4"), (FULL8, "bird-mixit-m8")])
def test_full_size_random_checkpoint_matches_tensorflow(folder, preset):
    """The full-size graphs (the published models' sizes), weights rebuilt from the seed."""
    info = json.loads((folder / "reference.json").read_text())
    script = _reference_script()
    tensors = {bird_mixit._plain(name): script.random_value(name, tuple(shape), info["seed"])
               for name, shape in info["variables"].items()}
    shapes = {name: t.shape for name, t in tensors.items()}
    cfg = bird_mixit._sizes(shapes, bird_mixit.PRESETS[preset])
    assert cfg == bird_mixit.PRESETS[preset]
    assert not bird_mixit._mismatch(shapes, bird_mixit.variables(cfg))
    model = bird_mixit.from_variables(tensors, cfg)
    for x, y in reference(folder):
        for m in (model, engine_for(model, "fp32")):
            assert snr_db(y, run(m, x)).min() >= MIN_SNR_DB


# ----------------------------------------------------------------------------- the converter


def test_convert_writes_a_model_that_saves_and_loads_identically(tmp_path, small_model):
    out = bird_mixit.convert(SMALL, tmp_path / "m4", name=M4)
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "card.json"}
    card = json.loads((out / "card.json").read_text())
    assert card["licence"] == "Apache-2.0" and card["checkpoint_step"] == 3223090
    assert card["source"].startswith("https://github.com/google-research/sound-separation")
    assert "sizes other than the published model's" in card["variant"]
    loaded = load_separator(out)
    assert isinstance(loaded, bird_mixit.BirdMixIT) and loaded.config == small_model.config
    x = torch.from_numpy(reference(SMALL)[0][0])[None]
    with torch.no_grad():
        assert torch.equal(loaded(x), small_model(x))
    with pytest.raises(UsageError, match="not empty"):
        bird_mixit.convert(SMALL, out, name=M4)


def _write_bundle(prefix: Path, tensors: dict[str, np.ndarray]) -> None:
    """A TF checkpoint (tensor bundle V2) of ``tensors``: a sorted table of BundleEntryProtos in
    uncompressed blocks of 50, their index block and the footer; the raw little-endian bytes in
    the data file."""
    def varint(v):
        out = bytearray()
        while True:
            out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
            v >>= 7
            if not out[-1] & 0x80:
                return bytes(out)

    def field(number, wire, payload):
        return varint(number << 3 | wire) + (varint(len(payload)) + payload if wire == 2 else varint(payload))

    dtypes = {np.dtype(np.float32): 1, np.dtype(np.int64): 9}
    data, entries = bytearray(), [(b"", field(1, 0, 1))]  # header: one shard
    for name in sorted(tensors):
        a = np.array(tensors[name], order="C")  # (0-d kept 0-d)
        shape = b"".join(field(2, 2, field(1, 0, d)) for d in a.shape)
        entries.append((name.encode(), field(1, 0, dtypes[a.dtype]) + field(2, 2, shape)
                        + field(4, 0, len(data)) + field(5, 0, a.nbytes)))
        data += a.tobytes()

    def block(items):
        body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in items)
        return body + struct.pack("<II", 0, 1)

    def with_trailer(contents):
        crc = tfcheckpoint.crc32c(contents + b"\0")
        masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
        return contents + b"\0" + struct.pack("<I", masked)

    table, pointers = bytearray(), []
    for i in range(0, len(entries), 50):  # several data blocks, as TF writes large indexes
        contents = block(entries[i:i + 50])
        pointers.append((entries[i:i + 50][-1][0], varint(len(table)) + varint(len(contents))))
        table += with_trailer(contents)
    index = block(pointers)
    index_at = len(table)
    table += with_trailer(index)
    meta_at = len(table)
    table += with_trailer(block([]))
    handles = varint(meta_at) + varint(len(block([]))) + varint(index_at) + varint(len(index))
    table += handles.ljust(40, b"\0") + struct.pack("<Q", tfcheckpoint.MAGIC)
    Path(f"{prefix}.index").write_bytes(bytes(table))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))


def _refusal(tmp_path, tensors, name=M4) -> str:
    folder = tmp_path / f"ckpt{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    _write_bundle(folder / "model.ckpt-3223090", tensors)
    with pytest.raises(UsageError) as err:
        bird_mixit.convert(folder, tmp_path / "never", name=name)
    assert not (tmp_path / "never").exists()
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(folder))
    return message


def test_mismatched_checkpoints_are_refused_in_one_line(tmp_path, small_model):
    tensors = tfcheckpoint.read(INDEX)
    rewritten = tmp_path / "rewritten"
    rewritten.mkdir()
    _write_bundle(rewritten / "model.ckpt-3223090", tensors)  # the writer itself: converts as the original
    x = reference(SMALL)[0][0]
    np.testing.assert_array_equal(run(bird_mixit.from_variables(*bird_mixit.read_checkpoint(rewritten, M4)[:2]), x),
                                  run(small_model, x))

    block = "improved_tdcn/conv_block_5/tdcn_block/timeconv/separable_conv/bias"
    message = _refusal(tmp_path, {k: v for k, v in tensors.items() if k != block})
    assert f"variables do not match the bird MixIT graph: 1 missing ({block})" in message
    message = _refusal(tmp_path, tensors | {"improved_tdcn/extra/dense/kernel": np.zeros((32, 32), np.float32)})
    assert "1 unexpected (improved_tdcn/extra/dense/kernel)" in message
    wrong = dict(tensors)
    wrong["improved_tdcn/conv_block_3/tdcn_block/dense2/dense/kernel"] = np.zeros((64, 31), np.float32)
    assert "1 of another shape (improved_tdcn/conv_block_3/tdcn_block/dense2/dense/kernel: (64, 31), " \
           "expected (64, 32))" in _refusal(tmp_path, wrong)
    no_skip = {k: v for k, v in tensors.items() if "res_dense_0_to_8" not in k}
    assert "missing" in _refusal(tmp_path, no_skip)
    assert "4 outputs, bird_mixit_m8 has 8" in _refusal(tmp_path, tensors, name="bird_mixit_m8")
    nan = dict(tensors)
    nan["dense/kernel"] = np.full_like(tensors["dense/kernel"], np.nan)
    assert "dense/kernel is not finite float32" in _refusal(tmp_path, nan)
    with pytest.raises(UsageError, match="not a published bird MixIT model"):
        bird_mixit.convert(SMALL, tmp_path / "x", name="bird_mixit_m5")
    with pytest.raises(UsageError, match=r"expected one model.ckpt-N.index \(found none\)"):
        bird_mixit.convert(tmp_path / "never", tmp_path / "x", name=M4)


# ----------------------------------------------------------------------------- through birdsep models import


@pytest.mark.slow
def test_models_import_converts_the_fixture_end_to_end(tmp_path, monkeypatch, capsys):
    """``birdsep models import DIR`` with the real converter, the pins replaced by the fixture's
    sizes and sha256; then ``separate --model bird_mixit_m4`` on the shipped example."""
    import soundfile as sf

    from birdsep import audio, pretrained
    from birdsep.cli import main

    monkeypatch.setenv("BIRDSEP_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("BIRDSEP_MODELS_URL", "http://127.0.0.1:9")
    given = tmp_path / "fetched"
    given.mkdir()
    real = modelstore.PUBLISHED[M4]
    for pin in real.checkpoint:
        shutil.copyfile(SMALL / pin.name, given / pin.name)
    monkeypatch.setitem(modelstore.PUBLISHED, M4, dataclasses.replace(real, files=tuple(
        modelstore.Pin(p.name, (SMALL / p.name).stat().st_size,
                       hashlib.sha256((SMALL / p.name).read_bytes()).hexdigest())
        if p in real.checkpoint else p for p in real.files)))
    assert main(["models", "import", str(given)]) == 0
    installed = tmp_path / "models" / M4
    assert f"{M4}: installed in {installed}" in capsys.readouterr().out
    card = json.loads((installed / "card.json").read_text())
    assert card["licence"] == "Apache-2.0" and card["checkpoint_step"] == 3223090
    assert card["installed"]["how"] == "birdsep models import"
    model = load_separator(pretrained.resolve(M4))
    for x, y in reference(SMALL):
        assert snr_db(y, run(model, x)).min() >= MIN_SNR_DB

    out = tmp_path / "separated"
    assert main(["separate", str(pretrained.EXAMPLE_RECORDING), "-o", str(out), "--model", M4, "-q"]) == 0
    folder = out / pretrained.EXAMPLE_RECORDING.stem
    meta = json.loads((folder / "separation.json").read_text())
    names = [s["file"] for s in meta["sources"]] + ([meta["high_band"]] if meta["high_band"] else [])
    tracks = [sf.read(folder / f, dtype="float32")[0] for f in names]
    x, _ = audio.load(pretrained.EXAMPLE_RECORDING)
    assert len(meta["sources"]) == 4
    np.testing.assert_allclose(np.sum(tracks, axis=0), x, atol=2e-4)


def _reference_script():
    spec = importlib.util.spec_from_file_location("bird_mixit_reference", REFERENCE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
