"""Stop strings: found across chunk boundaries, never sent, and partial matches held back."""

from __future__ import annotations

from serve_app.ingress.stop_checker import StopChecker


def run(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    checker = StopChecker(stops)
    released = "".join(checker.add(chunk) for chunk in chunks)
    return released + checker.flush(), checker.stopped


def test_stop_string_split_across_chunks_is_not_sent():
    assert run(["END"], ["abc E", "N", "Dxyz"]) == ("abc ", True)


def test_partial_match_is_held_back_then_released():
    checker = StopChecker(["END"])
    assert checker.add("abcEN") == "abc"
    assert checker.add("x") == "ENx"
    assert not checker.stopped


def test_earliest_of_several_stop_strings_wins():
    assert run(["zz", "b"], ["aab", "zz"]) == ("aa", True)


def test_no_stop_strings_releases_everything():
    assert run([], ["a", "b"]) == ("ab", False)


def test_unfinished_tail_is_flushed_when_generation_ends():
    assert run(["END"], ["abcE"]) == ("abcE", False)


def test_nothing_after_stop():
    checker = StopChecker(["."])
    assert checker.add("a.b") == "a"
    assert checker.add("more") == ""
    assert checker.flush() == ""
