from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cfn import keys
from cfn.errors import InvalidIdError

BAD_IDS = ["", "*", "a*", "?", "a?b", "[", "a[b]", ":", "a:b", "a b", "a\nb", "x" * 129, ".", ".."]
BAD_IDS += ["-rf", "--help", "-"]  # a command line would read them as options


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdError, match="invalid task id"):
        keys.coord_complete(bad)
    with pytest.raises(InvalidIdError):
        keys.swarm_result("task-1", bad)


def test_non_string_id_refused() -> None:
    with pytest.raises(InvalidIdError):
        keys.validate_id(123)


def test_seed_key_names() -> None:
    assert keys.coord("T1", keys.LOOP3_COMPLETE) == "coord:T1:loop3:complete"
    assert keys.coord("T1", keys.LOOP2_START) == "coord:T1:loop2:start"
    assert keys.coord("T1", keys.DECISION) == "coord:T1:decision"
    assert keys.coord("T1", "start-loop2") == "coord:T1:start-loop2"
    assert keys.coord_complete("T1") == "coord:T1:complete"
    assert keys.coord_error("T1") == "coord:T1:error"
    assert keys.coord_payload("T1", "impl-2-1") == "coord:T1:payload:impl-2-1"
    assert keys.coord_signal("T1", "a") == "coord:T1:signal:a"
    assert keys.swarm_signal("T1", "a") == "swarm:T1:signal:a"
    assert keys.swarm_result("T1", "a") == "swarm:T1:result:a"
    assert keys.context("T1", "deliverables") == "context:T1:deliverables"
    assert keys.context("T1", "metadata") == "context:T1:metadata"
    assert keys.lock("repo") == "lock:repo"
    assert keys.session("T1") == "session:T1"
    assert keys.cache_query("ab" * 16) == "cache:query:" + "ab" * 16


@pytest.mark.parametrize("bad", ["", ":", "a:", ":a", "a::b", "a b", "a*", "x" * 65, "a\n"])
def test_bad_channels_refused(bad: str) -> None:
    with pytest.raises(InvalidIdError, match="invalid channel"):
        keys.coord("T1", bad)


def test_bad_cache_hash_refused() -> None:
    with pytest.raises(InvalidIdError):
        keys.cache_query("*")


@given(st.text(min_size=0, max_size=200))
def test_any_accepted_id_is_safe(value: str) -> None:
    """Whatever passes validation holds no glob, separator or whitespace character."""
    try:
        keys.validate_id(value)
    except InvalidIdError:
        return
    assert 1 <= len(value) <= 128
    assert not set(value) & set("*?[]: \n\r\t\\")
    assert not value.startswith("-") and value not in (".", "..")
