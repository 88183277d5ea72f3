"""TensorFlow reference for the bird MixIT converter: google-research/sound-separation's own model
code, run with the published bird MixIT hyper-parameters and seeded random weights, saved as a TF
checkpoint beside its outputs on real audio at odd lengths. ``tests/test_bird_mixit.py`` converts
the checkpoint with birdsep and requires birdsep's outputs to match these to >= 60 dB SNR.

Runs in a virtual environment of its own (birdsep's stays free of TensorFlow)::

    python -m venv /tmp/tfref
    /tmp/tfref/bin/pip install tensorflow-cpu==2.21.0 tf-keras attrs immutabledict soundfile
    # the upstream code, unchanged, from a checkout of github.com/google-research/sound-separation:
    git clone https://github.com/google-research/sound-separation /tmp/sound-separation
    cd /work/main  # (this checkout)
    /tmp/tfref/bin/python benchmarks/bird_mixit_reference.py --upstream /tmp/sound-separation \\
        --preset small --out /tmp/bird_mixit_small_m4   # then copy model.ckpt-*, reference.* into
                                                        # tests/fixtures/bird_mixit/small_m4
    /tmp/tfref/bin/python benchmarks/bird_mixit_reference.py --upstream /tmp/sound-separation \\
        --preset full --sources 4 --lengths 22057 --out /tmp/bird_mixit_full_m4 \\
        --outputs-only tests/fixtures/bird_mixit/full_m4
    /tmp/tfref/bin/python benchmarks/bird_mixit_reference.py --upstream /tmp/sound-separation \\
        --preset full --sources 8 --step 2178900 --lengths 8821 --out /tmp/bird_mixit_full_m8 \\
        --outputs-only tests/fixtures/bird_mixit/full_m8

(a few minutes each on 2 cores; the full-size folders hold 110 MB checkpoints, not committed).

The graph is ``separate_waveforms`` of ``models/neurips2020_mixit/model.py`` (the MixIT model
code; the node names other projects quote from the published graph, ``conv_encoder/dense/Relu``,
``initial_dense/dense/BiasAdd``, ``improved_tdcn/conv_block_31/tdcn_block/dense2/dense_scale/mul``,
``.../normact1/instance_norm/batchnorm/mul``, are this code's) with

* ``sr`` 22050, ``ws`` 1 ms, ``hs`` 0.5 ms (a 22-sample window, 11-sample hop), 256 coefficients;
* ``network_config.improved_tdcn`` with ``add_skip_residual_connections=True``: the published
  checkpoints hold six 256x256 ``res_dense_j_to_k`` layers (their data files are exactly
  3 x (8,793,601 + 394,758) float32 + 16 bytes for M = 4: variables, Adam's two slots,
  ``global_step`` and Adam's two powers; without the skip connections 4.7 MB would be
  unaccounted). The checkpoints this script writes at full size are byte for byte as large as
  the published data files: 110,260,324 (M = 4) and 113,406,052 (M = 8);
* mixture consistency with ``mix_weights_type='magsq'``: the published checkpoints have no
  ``mix_weights`` variables (the M = 8 data file is larger than the M = 4 one by exactly three
  copies of the wider mask layer), which leaves ``uniform`` and ``magsq``, and the upstream code's
  ``uniform`` branch cannot build (``1.0 / tf.shape(...)[1]``: "Expected int32, but got 1.0");
* the input padded at the end to a multiple of the hop, the outputs cropped back (the published
  graph does this with ``FloorMod(-n, 11)``).

Weights: every variable is drawn by :func:`random_value` (NumPy only, seeded by the variable's
name), not by TF's initialisers, so that a test can rebuild the full-size weights without
TensorFlow and only the outputs need committing. Adam's slots are created (by one
``AdamOptimizer.minimize`` of a dummy loss, never run) so that the checkpoint holds what a
training run's does and the converter is shown to skip them.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
import types
import zlib
from pathlib import Path

import numpy as np

SAMPLE_RATE = 22050
PRESETS = {  # name -> num_coeffs, bottleneck, conv_channels, repeats, blocks per repeat
    "full": dict(num_coeffs=256, bottleneck=256, hidden=512, repeats=4, blocks=8),
    # 3 repeats so that the skip connections 0->4, 0->8, 4->8 exist; well under 1 MB with Adam's slots
    "small": dict(num_coeffs=32, bottleneck=32, hidden=64, repeats=3, blocks=4),
}
AUDIO = Path(__file__).resolve().parents[1] / "src" / "birdsep" / "examples" / "jura_forest_dawn.flac"


def random_value(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The reference weight of variable ``name``: drawn from a generator seeded by (seed, name).

    Matrices and kernels: uniform with the Glorot limit (as TF's default initialiser), scalars and
    vectors (PReLU slopes, norm gains and offsets, scales, biases) around their usual start values
    with a spread, so that a wrong mapping of any of them shows in the outputs."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    leaf = name.rsplit("/", 1)[-1]
    if len(shape) >= 2:
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        if "depthwise" in leaf:  # (k, 1, H, 1): one k-tap filter per channel
            fan_in, fan_out = shape[0], shape[0]
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape).astype(np.float32)
    centre = {"prelu": 0.1, "gamma": 1.0, "scale_layer": 0.9}.get(leaf, 0.0)
    spread = {"prelu": 0.05, "gamma": 0.2, "scale_layer": 0.3, "beta": 0.2}.get(leaf, 0.05)
    return (centre + spread * rng.uniform(-1.0, 1.0, shape)).astype(np.float32)


def clip(samples: int, offset: int = 0) -> np.ndarray:
    """``samples`` of the shipped example recording (a Jura dawn chorus), from ``offset``; taken
    as they are (22 kHz: the rate plays no part in the equality)."""
    import soundfile as sf

    x, _ = sf.read(AUDIO, dtype="float32", always_2d=True)
    return np.ascontiguousarray(x[offset:offset + samples, 0])


def build(upstream: Path, sources: int, sizes: dict, consistency: str):
    """The upstream inference graph for ``sources`` outputs; returns (graph, input, output)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the upstream code is Keras 2 / TF1 style
    import tensorflow as tf

    tf1 = tf.compat.v1
    tf1.disable_v2_behavior()
    if not hasattr(tf1, "estimator"):  # removed in TF 2.16; model.py imports it for model_fn only
        tf1.estimator = types.SimpleNamespace(ModeKeys=types.SimpleNamespace(TRAIN="train", EVAL="eval",
                                                                            PREDICT="infer"))
    if not hasattr(tf.keras.layers.Layer, "apply"):  # Keras 2's deprecated alias of __call__, gone since 2.13
        tf.keras.layers.Layer.apply = lambda self, inputs, *a, **k: self.__call__(inputs, *a, **k)
    sys.path.insert(0, str(upstream / "models" / "neurips2020_mixit"))
    sys.path.insert(0, str(upstream / "models"))
    import model  # noqa: E402 - google-research/sound-separation models/neurips2020_mixit/model.py

    model.network_config.improved_tdcn = functools.partial(
        model.network_config.improved_tdcn, bottleneck=sizes["bottleneck"], conv_channels=sizes["hidden"],
        num_dilations=sizes["blocks"], num_repeats=sizes["repeats"], add_skip_residual_connections=True)
    hparams = model.HParams(
        signal_names=[f"source_{i}" for i in range(sources)], signal_types=["source"] * sources,
        sr=float(SAMPLE_RATE), ws=0.001, hs=0.0005, num_coeffs=sizes["num_coeffs"], mix_weights_type=consistency)
    hop = int(round(hparams.hs * hparams.sr))
    graph = tf1.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        with tf1.variable_scope("input_audio"):
            audio = tf1.placeholder(tf.float32, [1, 1, None], name="receiver_audio")
        samples = tf.shape(audio)[-1]
        padded = tf.pad(audio, [[0, 0], [0, 0], [0, tf.math.floormod(-samples, hop)]])
        separated = model.separate_waveforms(padded, hparams)  # named 'denoised_waveforms' inside
        output = tf.identity(separated[..., :samples], name="reference_output")
        loss = tf.reduce_mean(tf.square(output))  # never run: only makes Adam's slots
        tf1.train.AdamOptimizer(1e-4).minimize(loss, global_step=tf1.train.get_or_create_global_step())
    return graph, audio, output


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", type=Path, required=True, help="checkout of google-research/sound-separation")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--consistency", choices=("magsq", "pred_source"), default="magsq")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--step", type=int, default=3223090, help="global_step written (names the checkpoint)")
    ap.add_argument("--lengths", default="4001,11031", help="clip lengths in samples (odd, not multiples of 11)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the checkpoint and outputs")
    ap.add_argument("--outputs-only", type=Path, help="also copy reference.npz and reference.json here")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    sizes = PRESETS[args.preset]
    graph, audio, output = build(args.upstream, args.sources, sizes, args.consistency)
    import tensorflow as tf

    tf1 = tf.compat.v1
    args.out.mkdir(parents=True, exist_ok=True)
    lengths = [int(n) for n in args.lengths.split(",")]
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        model_vars = tf1.trainable_variables()
        for v in model_vars:
            v.load(random_value(v.op.name, tuple(v.shape.as_list()), args.seed), sess)
        tf1.train.get_or_create_global_step().load(args.step, sess)
        saver = tf1.train.Saver()
        prefix = saver.save(sess, str(args.out / "model.ckpt"), global_step=args.step, write_meta_graph=False)
        tf1.train.export_meta_graph(filename=str(args.out / "inference.meta"))
        arrays, offset = {}, 0
        for n in lengths:
            x = clip(n, offset)
            offset += n
            y = sess.run(output, {audio: x[None, None, :]})[0]  # (M, T)
            arrays[f"input_{n}"], arrays[f"output_{n}"] = x, y.astype(np.float32)
    info = {
        "what": "google-research/sound-separation models/neurips2020_mixit/model.py separate_waveforms, "
                "bird MixIT hyper-parameters, random weights (benchmarks/bird_mixit_reference.py)",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "tensorflow": tf.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
        "preset": args.preset, "sources": args.sources, "consistency": args.consistency, "seed": args.seed,
        "step": args.step, "checkpoint": Path(prefix).name, "lengths": lengths, "audio": AUDIO.name,
        "variables": {v.op.name: v.shape.as_list() for v in model_vars}, **sizes,
    }
    np.savez_compressed(args.out / "reference.npz", **arrays)
    (args.out / "reference.json").write_text(json.dumps(info, indent=1) + "\n")
    if args.outputs_only:
        args.outputs_only.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.outputs_only / "reference.npz", **arrays)
        (args.outputs_only / "reference.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{prefix}: {len(model_vars)} variables; outputs at {lengths} samples in {args.out / 'reference.npz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
