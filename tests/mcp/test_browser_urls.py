"""The Playwright server's allow-list, as a pure check (tests/mcp/test_servers.py drives
a real browser): a URL is allowed by what it really names, not by how it starts."""

from __future__ import annotations

import pytest

from cfn.mcp.servers.browser import url_allowed

PATTERNS = ["http://127.0.0.1:*", "http://localhost:*"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/page.html",
        "http://localhost:3000/a?b=c@d",  # an @ in the query is not user info
        "about:blank",
        "data:text/html,hello",
    ],
)
def test_allowed(url: str) -> None:
    assert url_allowed(url, PATTERNS)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:80@outside.example/",  # user info: the host is outside.example
        "http://127.0.0.1:8080@outside.example:8080/",
        "http://localhost:1:pw@outside.example/",
        "http://127.0.0.1:8080\\@outside.example/",  # browsers read \ as /
        "http://127.0.0.1:80\n@outside.example/",
        "http://127.0.0.1:8080/ x",
        "https://outside.example/",
        "http://[::1",  # not a URL
    ],
)
def test_refused(url: str) -> None:
    assert not url_allowed(url, PATTERNS)
