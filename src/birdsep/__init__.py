"""birdsep: separate bird songs out of field recordings with MixIT, and classify them.

Python API::

    import birdsep
    sources, rate = birdsep.separate(waveform, sample_rate)   # numpy or torch, (T,) or (C, T)
    model = birdsep.load_model("runs/my_run")                  # a run directory or model folder
"""
__version__ = "0.1.0"

from birdsep.api import load_model, separate  # noqa: E402

__all__ = ["separate", "load_model", "__version__"]
