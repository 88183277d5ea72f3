"""birdsep: separate bird songs out of field recordings with MixIT, and classify them.

Python API (imported on first use, so that ``import birdsep`` stays light)::

    import birdsep
    sources, rate = birdsep.separate(waveform, sample_rate)   # numpy or torch, (T,), (C, T) or (T, C)
    model = birdsep.load_model("runs/my_run")                  # a run directory or model folder
    scores = birdsep.classify(waveform, sample_rate, classifier="birdnet")  # per-window species scores
"""
from birdsep.version import __version__

__all__ = ["separate", "load_model", "classify", "__version__"]


def __getattr__(name: str):
    if name in ("separate", "load_model", "classify"):
        from birdsep import api

        return getattr(api, name)
    raise AttributeError(f"module 'birdsep' has no attribute {name!r}")
