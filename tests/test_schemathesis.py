"""Schemathesis over the page's OpenAPI schema (issue 29): every operation, with generated
values and, as often, valid ones (a real recording's id, a served root, a track, a download
kind), so that requests reach the handlers and not only the 403s and 404s; no answer is a
server error. Bounded: a few examples per operation, and a time budget for the whole module."""
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

BUDGET_S = 60.0  # the whole module; what is left over is not generated
EXAMPLES = 20  # per operation
RID = "field/dawn.wav"
VALID = {  # query parameter → values that reach the handler
    "id": [RID, "field/site b/night.wav"],  # not the example: opening it would separate 30 s
    "root": ["field", "example", "uploads"],
    "track": ["mix", "source_1", "source_4", "high_band"],
    "what": ["track", "tracks", "picture", "json", "csv", "raven", "audacity"],
    "view": ["combined", "source_1"],
    "format": ["wav", "flac"],
    "scale": ["background", "peak"],
    "name": ["x.wav", "../x.wav", ""],
}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The page over one root with two recordings, one of them already separated."""
    from birdsep.cli import main
    from birdsep.pretrained import DEFAULT_SEPARATOR
    from birdsep.serve.app import ServeOptions, build

    tmp = tmp_path_factory.mktemp("page")
    rng = np.random.default_rng(0)
    for rel in ("dawn.wav", "site b/night.wav"):
        (tmp / "field" / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp / "field" / rel, (0.1 * rng.standard_normal(22050)).astype(np.float32), 22050)
    assert main(["separate", str(tmp / "field" / "dawn.wav"), "-o", str(tmp / "separated"), "-q"]) == 0
    app, jobs = build(ServeOptions(roots=[str(tmp / "field")], out=str(tmp), classifiers=[],
                                   allowed_hosts=["testserver"]))
    VALID["separator"] = [DEFAULT_SEPARATOR.name]
    yield app
    jobs.close(timeout=60)  # a job opened by a request (1 s of audio) ends


@pytest.fixture(scope="module")
def api(page):
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", page)

    @schema.hook
    def flatmap_query(context, query):
        if not query:
            return st.just(query)
        keys = [k for k in query if k in VALID]
        choices = {k: st.sampled_from([query[k], *VALID[k]]) for k in keys}
        return st.fixed_dictionaries(choices).map(lambda chosen: {**query, **chosen})

    return schema


def test_no_request_is_a_server_error(api):
    started, sent = time.monotonic(), []
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10 and any("/api/download" in op.path for op in operations)
    for op in operations:

        @given(op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def no_server_error(case):
            if time.monotonic() - started > BUDGET_S:
                return  # the module's time is spent: the rest is not sent
            response = case.call_and_validate(checks=[not_a_server_error])
            sent.append((op.method.upper(), op.path, (case.query or {}).get("id"), response.status_code))

        no_server_error()
    reached = {(m, p) for m, p, rid, code in sent if code == 200 and rid in VALID["id"]}
    assert len(reached) >= 5, sorted(set(sent))  # valid ids reach the handlers
