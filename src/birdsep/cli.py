"""The command line: argument parsing only.

Each command hands its arguments to one API or pipeline function, imported when the command
runs (so that ``birdsep --help`` and ``birdsep evaluate`` never import PyTorch). No traceback
reaches the user: an :class:`~birdsep.errors.InputError` prints one line and exits 2; a batch
exits 1 if any file failed. Flags renamed in this release keep their old spelling, hidden, for
one more release (:func:`old_name`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
import sys

from birdsep import limits, training
from birdsep.version import __version__
from birdsep.errors import InputError, Stopped, UsageError, exit_code, require
from birdsep.threads import limit_malloc_arenas
from birdsep.modes import DEFAULT_MODE, DEFAULT_RULE, MODES
from birdsep.separation import runtime

DESCRIPTION = ("Separate bird songs out of field recordings with unsupervised mixture invariant training (MixIT), "
               "and classify species from the mix and its separated tracks.")


class _OldName(argparse.Action):
    """An old spelling of a flag, kept for one release: hidden from --help; it works, and says
    the new name on stderr."""

    def __init__(self, option_strings, dest, new: str, const=None, **kw):
        super().__init__(option_strings, dest, nargs=0 if const is not None else None, const=const,
                         default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"birdsep: {option_string} is now {self.new} (the old name goes in the next release)", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def number(text: str) -> float:
    """A finite number (an argparse type): 'nan' and 'inf' are refused as any other non-number is."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def old_name(p, old: str, new: str, **kw) -> None:
    """Keep ``old`` working as a hidden alias of the flag now called ``new`` (same ``dest``)."""
    p.add_argument(old, action=_OldName, new=new, **kw)


def options_from(cls, args, **values):
    """The options dataclass ``cls`` from parsed ``args``: each field takes the value of the flag
    whose ``dest`` is its name (lists become tuples); ``values`` set or override fields."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}, **values})


def _quiet_flag(p) -> None:
    p.add_argument("-q", "--quiet", dest="progress", action="store_false", help="no progress bar")


def _batch_summary(verb: str, s, out: str) -> int:
    """The last line of a batch command that writes into a folder; exit code 1 if any file failed."""
    from birdsep import audio

    print(f"{verb} {len(s.done)} file(s) ({audio.amount(s.hours * 3600)}) into {out}; {len(s.skipped)} already done; "
          + (f"{len(s.others)} by another run on {out}; " if s.others else "")
          + f"{len(s.failed)} failed" + (f" (see {out}/errors.log)" if s.failed else ""))
    return s.exit_code


RAY_ADDRESS = re.compile(r"^(local|auto|(ray://)?[\w.\-]+:\d+|(ray://)?\[[0-9a-fA-F:]+\]:\d+)$")


def _batch_flags(p, verb: str) -> None:
    """-j, --threads and --ray of the commands that run over many files (:mod:`birdsep.batch`)."""
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help=f"files {verb} in parallel (default: one per core for 20 min of audio or more on the CPU, "
                        "else 1; with --ray: as many as the cluster holds)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per job (default: this machine's cores ÷ jobs; 1 per Ray worker)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the files on a Ray cluster: without ADDRESS start Ray on this machine; auto, HOST:PORT "
                        "or ray://HOST:10001 join one (inputs and -o on storage every node sees; needs the "
                        "cluster extra; put --ray after the inputs)")


def _check_batch_flags(a) -> None:
    if a.jobs is not None and a.jobs < 1 or a.threads is not None and a.threads < 1:
        raise UsageError("--jobs and --threads must be at least 1")
    if a.ray is not None and not RAY_ADDRESS.match(a.ray):
        raise UsageError(f"--ray {a.ray}: not a Ray address (auto, HOST:PORT or ray://HOST:10001; "
                         "without an address, put --ray after the inputs)")


def _printed_summary(command: str, s) -> int:
    """The last line (stderr) of a command that prints a table; exit code 1 if any file failed."""
    if s.failed:
        print(f"birdsep {command}: {len(s.failed)} file(s) failed", file=sys.stderr)
    return s.exit_code


# --------------------------------------------------------------------------- separation


def _add_separate(sub) -> None:
    p = sub.add_parser("separate", help="split recordings into per-source tracks",
                       description="Split recordings into per-source tracks (OUT/<name>/source_k.<format>, "
                                   "separation.json, optionally a picture and a video).")
    p.add_argument("inputs", nargs="+", help="audio files or folders (recursive)")
    p.add_argument("-o", "--out", default="separated", help="output folder (default: ./separated)")
    p.add_argument("--model", default=None, help="run directory or model folder (default: the shipped model)")
    p.add_argument("--sample-rate", default="native", help="output rate: native (the input's) or a number, e.g. 22050")
    p.add_argument("--block", dest="block_seconds", type=number, default=12.0,
                   help="block length in seconds for long files, 1 to 600 (default 12)")
    p.add_argument("--block-overlap", dest="overlap", type=number, default=0.125,
                   help="fraction of a block shared with the next, <= 0.5 (default 0.125: 1.5 s)")
    old_name(p, "--overlap", "--block-overlap", dest="overlap", type=number)
    runtime.add_flags(p)
    p.add_argument("--format", default="flac", choices=["flac", "wav"], help="the tracks' file format (default flac)")
    p.add_argument("--bits", type=int, default=24, choices=[16, 24, 32],
                   help="bits per sample: 16 or 24 (integer), 32 (float, wav only); default 24, where the tracks "
                        "sum to the input within 2^-24 of full scale")
    p.add_argument("--plot", action="store_true", help="write separation.png: the sources over the spectrogram")
    p.add_argument("--video", action="store_true", help="write separation.mp4 with a moving playhead (needs ffmpeg)")
    _batch_flags(p, "separated")
    _quiet_flag(p)

    def run(a):
        from birdsep.pipeline import SeparateOptions, separate_batch

        _check_batch_flags(a)
        if a.sample_rate != "native":
            try:
                limits.sample_rate(int(a.sample_rate) if a.sample_rate.isdigit() else a.sample_rate)
            except limits.InvalidValue:
                raise UsageError(f"--sample-rate must be 'native' or a rate in Hz from {limits.MIN_SAMPLE_RATE} to "
                                 f"{limits.MAX_SAMPLE_RATE} (e.g. 22050), not {a.sample_rate!r}") from None
        limits.blocks(a.block_seconds, a.overlap, ("--block", "--block-overlap"))
        s = separate_batch(a.inputs, options_from(SeparateOptions, a, plot=a.plot or a.video))
        return _batch_summary("separated", s, a.out)

    p.set_defaults(func=run)


def _add_train_separator(sub) -> None:
    p = sub.add_parser("train-separator", help="train a MixIT separator on unlabelled recordings")
    p.add_argument("data", nargs="+", help="audio files or folders (recursive)")
    training.add_flags(p, training.SeparatorTrainOptions)
    p.add_argument("--preset", default="stft",
                   help="design: stft (default: 32 kHz STFT masks, the shipped models' design) | stft-wide | small | paper")
    p.add_argument("--sources", type=int, default=None, help="number of output sources M (default: the preset's)")
    p.add_argument("--clip-seconds", type=number, default=None, help="mixture length (default: the preset's)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip files matching this glob (repeatable)")
    p.add_argument("--exclude-from", action="append", default=[], metavar="FILE",
                   help="skip files matching any glob listed in FILE (one per line, # comments; repeatable)")
    p.add_argument("--sparsity", type=number, default=0.0,
                   help="weight of a loss that keeps one sound in one output (ℓ1/ℓ2 of source levels; default 0)")
    p.add_argument("--references", type=int, default=2, metavar="N",
                   help="reference mixtures summed into some training inputs (default 2, the paper's MixIT); "
                        "with N = the number of sources no output is spare, so splitting what one window holds "
                        "over two outputs costs loss")
    p.add_argument("--references-share", type=number, default=0.5, metavar="P",
                   help="share of the batches that have N references when N > 2 (default 0.5; the rest have 2)")
    p.add_argument("--noise-share", type=number, default=0.0, metavar="P",
                   help="share of the mixtures whose last reference is stationary noise shaped like a window's "
                        "noise floor (default 0): MixIT then wants birds apart from the noise in their band")
    p.add_argument("--song-share", type=number, default=0.0, metavar="P",
                   help="share of the batches that are scenes of known sources instead of MoMs (default 0): "
                        "1 to M-1 songs cut from the recordings over a background, trained with a "
                        "permutation-invariant loss that counts a song split over two outputs as an error")
    p.add_argument("--level-gap", type=number, default=0.0, metavar="DB",
                   help="draw each mixture's other recordings below the first by 0 … DB dB (default 0: "
                        "independent levels), so that faint birds under loud ones are common in training")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="warm start from a model folder or run directory (its design; --sources may add outputs)")

    def run(a):
        from birdsep.files import read_list

        require("lightning", "train", "training")
        from birdsep.separation.train import train_separator

        globs = [g for f in a.exclude_from for g in read_list(f, "exclude list")]
        train_separator(a.data, options_from(training.SeparatorTrainOptions, a, exclude=tuple(a.exclude + globs)))
        return 0

    p.set_defaults(func=run)


def _add_eval_separator(sub) -> None:
    p = sub.add_parser("eval-separator", help="MoMi of a separator on held-out mixtures of mixtures")
    p.add_argument("data", nargs="+", help="held-out audio files or folders")
    p.add_argument("--model", default=None, help="run directory or model folder (default: the shipped model)")
    p.add_argument("--mixtures", type=int, default=100, help="number of mixtures of mixtures")
    p.add_argument("--clip-seconds", type=number, default=6.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    _quiet_flag(p)

    def run(a):
        from birdsep.separation.evaluate import evaluate_separator

        report = evaluate_separator(a.data, model=a.model, mixtures=a.mixtures, clip_seconds=a.clip_seconds,
                                    seed=a.seed, json_path=a.json, threads=a.threads, progress=a.progress)
        print(report.table())
        return 0

    p.set_defaults(func=run)


def _add_models(sub) -> None:
    from birdsep.modelstore import PUBLISHED  # the standard library only

    names = " or ".join(PUBLISHED)
    p = sub.add_parser("models", help="list the separators (shipped, installed, to download); download or import "
                                      "Google's published bird MixIT models",
                       description="Without ACTION: list the separators --model takes by name, shipped, installed "
                                   "and published (to download), with their MoMi and training facts.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    d = actions.add_parser("download", help=f"fetch, check and convert a published model ({names})",
                           description="Download a published model's checkpoint (resumed if interrupted), check its "
                                       "size and sha256, convert it and install it in the user model folder "
                                       "($BIRDSEP_MODELS_DIR; from $BIRDSEP_MODELS_URL).")
    d.add_argument("name", metavar="NAME", help=names)
    d.add_argument("--force", action="store_true", help="download and install it again if it is installed")
    _quiet_flag(d)
    i = actions.add_parser("import", help="convert published checkpoint files fetched another way (e.g. gsutil)",
                           description="Check and convert the bird MixIT checkpoint files in DIR (model.ckpt-N.index "
                                       "+ .data-00000-of-00001, or DIR/output_sources4 and DIR/output_sources8) "
                                       "and install them in the user model folder; DIR is left as it is.")
    i.add_argument("folder", metavar="DIR")
    i.add_argument("--force", action="store_true", help="install it again if it is installed")

    def run(a):
        if a.action is None:
            from birdsep.pretrained import models_table

            print(models_table())
            return 0
        from birdsep import modelstore

        if a.action == "download":
            done = [(a.name, *modelstore.download(a.name, force=a.force, progress=a.progress))]
        else:
            done = modelstore.import_checkpoints(a.folder, force=a.force)
        for name, folder, fresh in done:
            print(f"{name}: installed in {folder}; --model {name} uses it" if fresh else
                  f"{name}: already installed in {folder} (--force installs it again)")
        return 0

    p.set_defaults(func=run)


# --------------------------------------------------------------------------- classification


def _add_train_classifier(sub) -> None:
    p = sub.add_parser("train-classifier", help="train the taxonomic bird classifier on weakly labelled recordings")
    p.add_argument("data", help="a folder with one sub-folder per species, or a CSV (file, primary, background)")
    training.add_flags(p, training.ClassifierTrainOptions)
    old_name(p, "--no-progress", "--quiet", dest="progress", const=False)
    p.add_argument("--noise", nargs="+", action="extend", default=[], metavar="DIR",
                   help="folders of noise / non-bird recordings for the noise augmentations")
    p.add_argument("--species-list", default=None, metavar="FILE",
                   help="target species, one per line; recordings of other species train only the taxonomy heads")
    p.add_argument("--taxonomy", default=None, metavar="CSV",
                   help="extra or overriding taxonomy: CSV with species,genus,family,order")
    p.add_argument("--backbone", default="b0", choices=["b0", "b1", "b2"], help="EfficientNet size (default b0)")
    p.add_argument("--ensemble", type=int, default=1, metavar="K", help="train K members; logits are averaged")
    p.add_argument("--max-windows", type=int, default=5, help="activity windows per recording (default 5)")
    p.add_argument("--no-augment", action="append", default=[], metavar="NAME",
                   help="switch off an augmentation: crop, gain, mix, noise, noise-only, lowpass (repeatable)")
    p.add_argument("--embeddings", default=None, choices=["birdnet"],
                   help="train the taxonomic heads on BirdNET V2.4 embeddings of the activity windows (minutes on a "
                        "CPU; needs the birdnet extra) instead of an EfficientNet from scratch")
    p.add_argument("--tracks", action=argparse.BooleanOptionalAction, default=False,
                   help="with --embeddings: also embed each window's separated tracks (as mix+separated hears "
                        "them) and train on {mix, tracks} (default: off; 3.5x the CPU time, and no better than "
                        "the mix alone on held-out recordings so far)")
    p.add_argument("--separator", default=None, metavar="MODEL",
                   help="with --tracks: the separator (a shipped model's name or a folder; default the shipped one)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="with --embeddings: embedding cache (default ~/.cache/birdsep/embeddings)")

    def run(a):
        if a.embeddings:
            from birdsep.classification.heads_train import train_heads

            train_heads(a.data, options_from(training.ClassifierTrainOptions, a))
            return 0
        require("lightning", "train", "training")
        require("timm", "train", "training")
        from birdsep.classification.train import train_classifier

        train_classifier(a.data, options_from(training.ClassifierTrainOptions, a))
        return 0

    p.set_defaults(func=run)


def _add_classify_clips(sub) -> None:
    p = sub.add_parser("classify-clips", help="per-species probabilities for each 5 s window of audio files")
    p.add_argument("files", nargs="+", help="audio files or folders (recursive)")
    p.add_argument("--classifier", metavar="RUN_DIR", help="a train-classifier run directory (required)")
    old_name(p, "--model", "--classifier", dest="classifier")  # not `required=`: argparse would miss the old name
    p.add_argument("--top", type=int, default=None, metavar="K", help="print only the K most probable species")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")

    def run(a):
        from birdsep.clips import classify_clips

        if not a.classifier:
            raise UsageError("--classifier RUN_DIR is required")
        return _printed_summary("classify-clips", classify_clips(a.classifier, a.files, top=a.top, threads=a.threads))

    p.set_defaults(func=run)


def _add_detect_activity(sub) -> None:
    p = sub.add_parser("detect-activity", help="the 6 s windows of peak activity in each recording")
    p.add_argument("files", nargs="+", help="audio files or folders (recursive)")
    p.add_argument("--max-windows", type=int, default=5, help="at most this many windows per file (default 5)")
    old_name(p, "--windows", "--max-windows", dest="max_windows", type=int)
    p.add_argument("--window", type=number, default=6.0, help="window length in seconds (default 6)")
    old_name(p, "--seconds", "--window", dest="window", type=number)

    def run(a):
        from birdsep.clips import detect_activity_files

        s = detect_activity_files(a.files, window_seconds=a.window, max_windows=a.max_windows)
        return _printed_summary("detect-activity", s)

    p.set_defaults(func=run)


# --------------------------------------------------------------------------- separate + classify


def _alias(p, flag: str, dest: str, **kw) -> None:
    """A hidden second spelling of an option (BirdNET-Analyzer's, e.g. --min_conf for --min-conf)."""
    p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)


def _rtypes(values: list[str]) -> tuple[str, ...]:
    """--rtype table,csv or --rtype table csv → ("table", "csv") (order kept, repeats dropped)."""
    out = []
    for v in values:
        out += [t.strip().lower() for t in v.split(",") if t.strip() and t.strip().lower() not in out]
    return tuple(out)


def _add_location(p, required: bool = False) -> None:
    """BirdNET-Analyzer's --lat/--lon/--week/--sf-thresh (its metadata model's species list)."""
    p.add_argument("--lat", type=number, default=None, required=required,
                   help="latitude (decimal degrees, -90..90): only species BirdNET's metadata model expects there"
                        + ("" if required else " (needs --lon)"))
    p.add_argument("--lon", type=number, default=None, required=required,
                   help="longitude (decimal degrees, -180..180)")
    p.add_argument("--week", type=int, default=-1,
                   help="week of the year, 1..48 (four a month), or -1 for the whole year (default -1)")
    p.add_argument("--sf-thresh", type=number, default=0.03,
                   help="lowest occurrence score for the location filter, 0.0001..0.99 (default 0.03)")
    _alias(p, "--sf_thresh", "sf_thresh", type=number)


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="species detections from the mix and/or its separated tracks")
    p.add_argument("inputs", nargs="+", help="audio files or folders (recursive)")
    p.add_argument("-o", "--out", default="detections", help="output folder (default: ./detections)")
    _alias(p, "--output", "out")
    p.add_argument("--classifier", default="birdnet", metavar="birdnet|RUN_DIR",
                   help="'birdnet' (the default; needs the birdnet extra) or a train-classifier run directory")
    p.add_argument("--mode", default=DEFAULT_MODE, choices=MODES,
                   help=f"score the mix, the separated tracks, or both (default {DEFAULT_MODE})")
    p.add_argument("--combine", default=DEFAULT_RULE,
                   help="how mix+separated pools the scores: default (the mix's score, raised by a quarter of what the "
                        "best track says above it, never lowered) or max (the paper's: the maximum over the mix "
                        "and every track); see docs/classify.md")
    p.add_argument("--window", type=number, default=5.0, help="window length in seconds (default 5)")
    p.add_argument("--overlap", type=number, default=0.0,
                   help="seconds shared by consecutive windows, 0 <= overlap < window (default 0)")
    p.add_argument("--min-conf", type=number, default=0.1, help="lowest confidence written, 0..1 (default 0.1)")
    _alias(p, "--min_conf", "min_conf", type=number)
    p.add_argument("--sensitivity", type=number, default=1.0,
                   help="detection sensitivity as in BirdNET-Analyzer, 0.5..1.5: higher values shift every score up "
                        "(default 1)")
    p.add_argument("--species-list", default=None, metavar="FILE",
                   help="only these species, one per line (full label, scientific or common name)")
    _alias(p, "--slist", "species_list")
    _add_location(p)
    p.add_argument("--rtype", nargs="+", default=["table,csv,audacity"], metavar="TYPE",
                   help="output types, comma- or space-separated: table (Raven), csv, audacity, kaleidoscope "
                        "(default table,csv,audacity)")
    p.add_argument("--model", default=None, metavar="SEPARATOR",
                   help="separator run directory or model folder (default: the shipped model)")
    p.add_argument("--tracks", default="separated", metavar="DIR",
                   help="where 'birdsep separate' wrote tracks: those of the same separator and input are used "
                        "instead of separating again (default ./separated, separate's own default)")
    p.add_argument("--keep-tracks", action="store_true",
                   help="write the tracks made here into --tracks, as 'birdsep separate' would")
    runtime.add_flags(p)
    _batch_flags(p, "classified")
    _quiet_flag(p)

    def run(a):
        from birdsep.detect import ClassifyOptions, classify_batch

        _check_batch_flags(a)
        return _batch_summary("classified", classify_batch(a.inputs, options_from(ClassifyOptions, a,
                                                                                  rtype=_rtypes(a.rtype))), a.out)

    p.set_defaults(func=run)


def _add_species(sub) -> None:
    p = sub.add_parser("species", help="the species BirdNET expects at a place and week (its metadata model)")
    _add_location(p, required=True)
    p.add_argument("--sortby", default="freq", choices=["freq", "alpha"],
                   help="most likely first (default) or alphabetical")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="also write the list here (one label a line, usable as --species-list)")
    p.add_argument("--scores", action="store_true", help="print each species' occurrence score too")

    def run(a):
        from birdsep.backends import location_species

        found = location_species(a.lat, a.lon, a.week, a.sf_thresh)
        if a.sortby == "alpha":
            found.sort(key=lambda x: x[0])
        for label, score in found:
            print(f"{label}\t{score:.4f}" if a.scores else label)
        if a.output:
            from birdsep import files

            files.write_text(a.output, "".join(f"{label}\n" for label, _ in found))
        print(f"{len(found)} species at {a.lat:g}, {a.lon:g}, week {a.week} (threshold {a.sf_thresh:g})",
              file=sys.stderr)
        return 0

    p.set_defaults(func=run)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="cmAP, lwlrap, d' and top-1 precision of detections against annotations")
    p.add_argument("--pred", required=True, action="append", metavar="PRED",
                   help="predictions: a CSV or Raven table, or a folder of them (repeat for one row each)")
    p.add_argument("--truth", required=True, nargs="+", metavar="TRUTH",
                   help="annotations: Raven selection tables or CSV (file, start, end, species), or folders")
    p.add_argument("--window", type=number, default=5.0, help="scoring window in seconds (default 5)")
    p.add_argument("--species-list", default=None, metavar="FILE", help="also score these species (one per line)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the scores as JSON")

    def run(a):
        from birdsep.evaluation import evaluate_command

        return evaluate_command(a.pred, a.truth, window=a.window, json_path=a.json, species_list=a.species_list)

    p.set_defaults(func=run)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="a local web page: open recordings, hear their tracks, check detections")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; other hosts must be asked for)")
    p.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="NAME",
                   help="a further name the page answers to (repeatable): it answers only requests that name this "
                        "machine (its addresses, its host name, localhost) whatever --host is, so that no web site "
                        "can reach it through a DNS name of its own")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="a folder of recordings the page may open (repeatable); nothing else on disk is readable")
    p.add_argument("-o", "--out", default=".", metavar="DIR",
                   help="where results go (default: the current folder: separated/ and detections/, "
                        "as birdsep separate and classify write them)")
    p.add_argument("--classifier", action="append", default=None, metavar="birdnet|RUN_DIR",
                   help="classifiers the page offers (repeatable; default: birdnet when its extra is installed)")
    p.add_argument("--max-upload-mb", type=number, default=1024, help="largest upload accepted (default 1024 MB)")
    runtime.add_flags(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the work")

    def run(a):
        from birdsep.serve.app import ServeOptions, serve

        if not 0 <= a.port <= 65535:
            raise UsageError("--port must be between 0 and 65535")
        return serve(ServeOptions(host=a.host, port=a.port, roots=a.root, out=a.out, classifiers=a.classifier,
                                  max_upload_mb=a.max_upload_mb, device=a.device, precision=a.precision,
                                  threads=a.threads, allowed_hosts=a.allowed_hosts))

    p.set_defaults(func=run)


COMMANDS = [_add_separate, _add_train_separator, _add_eval_separator, _add_train_classifier, _add_classify_clips,
            _add_detect_activity, _add_classify, _add_species, _add_evaluate, _add_serve, _add_models]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birdsep", description=DESCRIPTION,
                                     epilog="`birdsep COMMAND --help` lists a command's options.")
    parser.add_argument("--version", action="version", version=f"birdsep {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    limit_malloc_arenas()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"birdsep {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if not isinstance(exc, Stopped):  # a Stopped run has said where it stopped
            print(f"birdsep {args.command}: interrupted", file=sys.stderr)
        return exit_code(exc)  # 130 after Ctrl-C, 143 after SIGTERM
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
