"""The broker warm-up is in proportion to the run: at most one request per image, none for a short run,
exactly what `--warm-up N` asks for otherwise."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from configs import load_config
from streamer.__main__ import parse_args
from streamer.run import warm_up_size

STREAMER = load_config(None, "stream.py").streamer


@given(images=st.integers(0, 1_000_000), cap=st.integers(0, 100_000), threshold=st.integers(0, 100_000))
def test_warm_up_is_at_most_the_run_and_none_below_the_threshold(images, cap, threshold):
    n = warm_up_size(images, cap, threshold)
    assert 0 <= n <= min(images, cap)
    assert n == (0 if images < threshold else min(images, cap))


@given(images=st.integers(0, 1_000_000), asked=st.integers(0, 1_000_000))
def test_a_flag_gets_exactly_what_it_asks_for(images, asked):
    args = parse_args(["--warm-up", str(asked)])
    assert warm_up_size(images, STREAMER.warm_up, STREAMER.warm_up_from, args.warm_up) == asked


def test_the_shipped_settings():
    """`make run` (10,000 images) keeps its 10,000-request warm-up; a 225-image folder gets none."""
    assert (STREAMER.warm_up, STREAMER.warm_up_from) == (10_000, 1_000)
    assert warm_up_size(10_000, STREAMER.warm_up, STREAMER.warm_up_from, parse_args([]).warm_up) == 10_000
    assert warm_up_size(225, STREAMER.warm_up, STREAMER.warm_up_from, parse_args([]).warm_up) == 0
    assert warm_up_size(999, STREAMER.warm_up, STREAMER.warm_up_from) == 0
    assert warm_up_size(1_000, STREAMER.warm_up, STREAMER.warm_up_from) == 1_000
