"""`make test` runs ``--dist loadgroup``: the tests of one expensive fixture share a worker.

tests/conftest.py marks every test that uses a module-scoped fixture (or a shared
session one) with an ``xdist_group``, so the fixture is set up once instead of once
per worker. Grouping can stop without anything failing: pytest 9.2 with pytest-xdist
3.8 silently dropped every group, and the security corpora, the MCP stack and the
rest were set up on all four workers. This test fails when that happens again.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def module_scoped() -> str:
    return "set up once for the module"


def test_a_test_of_a_module_fixture_carries_its_group(
    request: pytest.FixtureRequest, module_scoped: str
) -> None:
    marks = [m.args[0] for m in request.node.iter_markers("xdist_group")]
    assert marks == ["tests/test_xdist_groups.py"], module_scoped
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not a pytest-xdist worker under --dist loadgroup")
    # what the loadgroup scheduler reads: the group after the last "@" of the node id
    assert request.node.nodeid.endswith("@tests/test_xdist_groups.py")
