"""The agent server's wire format: lines both ways, and the command request's framing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cfn.system import forkwire as wire


def test_replies_round_trip_and_refusals_carry_their_reason() -> None:
    assert wire.parse_pid(wire.pid_line(4242)) == 4242
    assert wire.parse_exit(wire.exit_line(256, 0.25, 0.125, 2048)) == (256, 0.25, 0.125, 2048)
    with pytest.raises(ValueError, match="stale: code changed"):
        wire.parse_pid(wire.error_line("stale: code\nchanged"))
    with pytest.raises(ValueError, match="closed the connection"):
        wire.parse_pid(b"")
    for bad in (b"pid x\n", b"pid -1\n", b"hello\n"):
        with pytest.raises(ValueError):
            wire.parse_pid(bad)
    for bad in (b"", b"exit 1 2\n", b"exit a b c d\n", b"pid 3\n"):
        assert wire.parse_exit(bad) is None


def test_a_command_request_round_trips_and_a_broken_one_is_refused() -> None:
    env = {"PATH": "/bin", "EMPTY": "", "EQUALS": "a=b=c", "UNICODE": "d\u00e9j\u00e0"}
    argv = ["signal", "send", "--payload", '{"a": "b c"}', ""]
    encoded = wire.encode_command("cfn", "/tmp/x y", argv, env)
    header, _, payload = encoded.partition(b"\n")
    assert int(header) == len(payload)
    assert wire.decode_command(payload) == ("cfn", "/tmp/x y", argv, env)
    for bad in (
        b"",
        b"cfn\0/\0two\0a",
        b"cfn\0/\x005\0a",
        b"cfn\0/\x000\0NOEQUALS",
        b"cfn\0/\x000\0=v",
    ):
        with pytest.raises(ValueError, match="malformed"):
            wire.decode_command(bad)


def test_read_line_stops_at_the_newline_and_at_the_end() -> None:
    data = bytearray(b"pid 7\nexit 0 0 0 0\n")

    def recv(n: int) -> bytes:
        chunk = bytes(data[:n])
        del data[:n]
        return chunk

    assert wire.read_line(recv) == b"pid 7\n"
    assert wire.read_line(recv) == b"exit 0 0 0 0\n"
    assert wire.read_line(recv) == b""


def test_a_json_request_is_one_object_with_an_environment_and_bounded() -> None:
    def feeder(data: bytes) -> Callable[[int], bytes]:
        buffer = bytearray(data)

        def recv(n: int) -> bytes:
            chunk = bytes(buffer[:n])
            del buffer[:n]
            return chunk

        return recv

    good = b'{"env": {"A": "1"}, "cwd": "/"}\n'
    assert wire.read_json_request(feeder(good)) == {"env": {"A": "1"}, "cwd": "/"}
    for bad in (b"[1]\n", b'{"env": "x"}\n', b"{broken\n", b""):
        with pytest.raises(ValueError):
            wire.read_json_request(feeder(bad))
    with pytest.raises(ValueError, match="too large"):
        wire.read_json_request(feeder(b"x" * (wire.REQUEST_MAX + 70_000)))
