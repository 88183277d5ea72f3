"""``birdsep serve``: a local web page to open a recording, see and hear its separated tracks,
and check its detections by ear.

- :mod:`birdsep.serve.library`: what the page may open (recordings under the roots, uploads,
  the bundled example), where their results live (``birdsep separate``'s and ``birdsep
  classify``'s own layouts, so the command line and the page share results) and the one
  function every path from the page goes through.
- :mod:`birdsep.serve.jobs`: background work (separate, then classify), one job per
  recording and settings, with progress.
- :mod:`birdsep.serve.media`: what the page shows and downloads: spectrogram images on one
  level scale, audio for the players, converted tracks.
- :mod:`birdsep.serve.app`: the HTTP API (FastAPI) and the server (uvicorn).
- ``static/``: the page (plain ES modules, no build step) and the vendored wavesurfer.js.
"""
