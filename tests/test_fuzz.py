"""Property-based fuzzing of the numbers birdsep takes (issue 29): whatever number the Python
API or a numeric command-line option is given, the answer is a result or one clear line (an
InvalidValue / exit code 2), never a hang, a traceback or an internal error. Bounded in time."""
import math

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import birdsep  # noqa: E402
from birdsep import limits  # noqa: E402
from birdsep.cli import main  # noqa: E402
from birdsep.separation.model import Separator, SeparatorConfig  # noqa: E402

TINY = SeparatorConfig(num_coeffs=16, bottleneck=8, hidden=16, repeats=1, blocks=3)
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Anything a caller might pass as a number: floats of every kind (nan, ±inf, subnormal, huge),
#: integers of any size, and a few things that are not numbers at all.
ANY_NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
                       st.sampled_from([None, "22050", True, b"1", 1j, np.float32(22050), np.int64(32000)]))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Separator(TINY).eval()


class Silent:
    labels = ["Aaa aaa_A"]
    window_seconds, sample_rate, name = 1.0, 22050, "silent"

    def predict(self, windows):
        return np.zeros((len(windows), 1), np.float32)


def _accepts(check, *args) -> bool:
    try:
        check(*args)
    except limits.InvalidValue:
        return False
    return True


@FAST
@given(rate=ANY_NUMBER)
def test_separate_takes_any_sample_rate_or_refuses_it_in_one_line(tiny, rate):
    x = np.zeros(2000, np.float32)
    if not _accepts(limits.sample_rate, rate):
        with pytest.raises(limits.InvalidValue) as err:
            birdsep.separate(x, rate, tiny, device="cpu", precision="fp32")
        assert "\n" not in str(err.value)
        return
    y, out_rate = birdsep.separate(x, rate, tiny, device="cpu", precision="fp32")
    assert out_rate == int(rate) and y.shape == (TINY.num_sources, len(x)) and np.isfinite(y).all()


@FAST
@given(block=ANY_NUMBER, overlap=ANY_NUMBER)
def test_separate_takes_any_block_settings_or_refuses_them(tiny, block, overlap):
    x = np.zeros(4000, np.float32)
    try:
        y, _ = birdsep.separate(x, 22050, tiny, block_seconds=block, overlap=overlap, device="cpu", precision="fp32")
    except limits.InvalidValue as err:
        assert "\n" not in str(err) and not _accepts(limits.blocks, block, overlap)
        return
    assert y.shape == (TINY.num_sources, len(x))
    assert 1 <= float(block) <= 600 and 0 < float(overlap) <= 0.5


@FAST
@given(rate=ANY_NUMBER, window=ANY_NUMBER, overlap=st.one_of(st.floats(-10, 10), st.just(math.nan)))
def test_classify_takes_any_rate_and_window_or_refuses_them(rate, window, overlap):
    x = np.zeros(22050, np.float32)
    try:
        res = birdsep.classify(x, rate, Silent(), mode="mix", window=window, overlap=overlap, device="cpu")
    except limits.InvalidValue as err:
        assert "\n" not in str(err)
        return
    assert res.scores.shape[1] == 1 and len(res.spans) >= 1


NUMERIC_OPTIONS = [
    ("separate", "--block"), ("separate", "--block-overlap"), ("separate", "--sample-rate"),
    ("classify", "--window"), ("classify", "--overlap"), ("classify", "--min-conf"), ("classify", "--sensitivity"),
    ("detect-activity", "--window"), ("evaluate", "--window"), ("eval-separator", "--clip-seconds"),
]
TEXT_NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10**12, 10**12).map(str),
                         st.sampled_from(["", "1e309", "-0", "0x10", "1_000", " 5 ", "nan", "-inf", "½"]))


@FAST
@given(which=st.sampled_from(NUMERIC_OPTIONS), value=TEXT_NUMBERS)
def test_numeric_options_never_give_a_traceback(tmp_path_factory, capsys, which, value):
    """Given no real input, every command must stop with one line (usage or error), whatever the number."""
    command, flag = which
    tmp = tmp_path_factory.mktemp("fuzz")
    argv = {"separate": ["separate", str(tmp / "none.wav"), "-o", str(tmp / "out")],
            "classify": ["classify", str(tmp / "none.wav"), "-o", str(tmp / "out"), "--classifier", str(tmp)],
            "detect-activity": ["detect-activity", str(tmp / "none.wav")],
            "evaluate": ["evaluate", "--pred", str(tmp / "p.csv"), "--truth", str(tmp / "t.csv")],
            "eval-separator": ["eval-separator", str(tmp / "none")]}[command]
    try:
        code = main([*argv, f"{flag}={value}"])
    except SystemExit as exc:  # argparse: a usage line and exit code 2
        code = exc.code
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "internal error" not in err, err
