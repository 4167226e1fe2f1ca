"""What lets a fresh checkout reuse the images another checkout built.

The agent and orchestrator images are labelled with a hash of their wheels, so the
cfn wheel must come out byte for byte the same from any checkout of the same sources,
and the dependency wheels are shared through the machine's cache directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest

from cfn.deploy.images import BuildReport, ImageBuilder, _complete, _prune, _share, build_cfn_wheel
from cfn.settings import Settings, find_project_root


def _checkout_copy(dest: Path, mtime: int) -> Path:
    root = find_project_root()
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, dest / name)
    shutil.copytree(root / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for path in dest.rglob("*"):
        os.utime(path, (mtime, mtime))
    return dest


def test_the_cfn_wheel_has_the_same_bytes_in_every_checkout_and_is_shared(
    tmp_path: Path,
) -> None:
    """Two checkouts of the same sources (different file times) build the same bytes;
    a third takes the wheel from the machine's cache instead of building it."""
    cache = tmp_path / "cache"
    wheels, reports = [], []
    for n, mtime in enumerate((1_600_000_000, 1_700_000_000, 1_650_000_000)):
        checkout = _checkout_copy(tmp_path / f"checkout{n}", mtime)
        if n == 1:  # built without the cache
            out = tmp_path / "out"
            build_cfn_wheel(sys.executable, checkout, out, scratch=tmp_path)
        else:
            settings = Settings(cfn_cache_dir=cache, cfn_state_dir=checkout / ".cfn")
            builder = ImageBuilder(settings, client=None)  # type: ignore[arg-type]  # no engine
            builder.root = checkout
            report = BuildReport()
            builder.build_cfn_wheel(report)
            reports.append(report)
            out = checkout / ".cfn" / "images" / "context" / "wheels" / "cfn"
        (wheel,) = out.glob("cfn-*.whl")
        wheels.append(hashlib.sha256(wheel.read_bytes()).hexdigest())
    assert wheels[0] == wheels[1] == wheels[2]
    assert reports[0].built == ["cfn wheel"] and reports[0].cached == []
    assert reports[1].built == [] and reports[1].cached == ["cfn wheel"]
    assert [p.name[:4] for p in (cache / "wheels").iterdir()] == ["cfn-"]


def test_only_the_newest_cfn_wheels_are_kept(tmp_path: Path) -> None:
    for n in range(10):
        (tmp_path / f"cfn-{n}").mkdir()
        os.utime(tmp_path / f"cfn-{n}", (1_600_000_000 + n, 1_600_000_000 + n))
    (tmp_path / "deadbeef").mkdir()  # a set of dependency wheels: not the cfn wheel's
    _prune(tmp_path, "cfn-", 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        *(f"cfn-{n}" for n in range(2, 10)),
        "deadbeef",
    ]


def test_shared_wheels_appear_whole_or_not_at_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    built = tmp_path / "built"
    built.mkdir()
    (built / "a-1.0-py3-none-any.whl").write_bytes(b"wheel")
    (built / ".inputs").write_text("inputs-1")
    shared = tmp_path / "cache" / "wheels" / "inputs-1"
    assert not _complete(shared, "inputs-1")
    _share(built, shared)
    assert _complete(shared, "inputs-1") and not _complete(shared, "inputs-2")
    assert (shared / "a-1.0-py3-none-any.whl").read_bytes() == b"wheel"
    # a second checkout sharing the same set finds it there and leaves it whole
    _share(built, shared)
    assert _complete(shared, "inputs-1")
    assert sorted(p.name for p in shared.parent.iterdir()) == ["inputs-1"]
    # a cache that cannot be written costs speed, never the build
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="cfn.deploy.images"):
        _share(built, blocked / "wheels" / "inputs-1")
    assert "cannot cache the wheels" in caplog.text


def test_the_cache_dir_follows_its_settings(tmp_path: Path) -> None:
    assert Settings(cfn_cache_dir=tmp_path / "c").cache_dir == tmp_path / "c"
    assert Settings(xdg_cache_home=tmp_path / "x").cache_dir == tmp_path / "x" / "cfn"
    unset = Settings(cfn_cache_dir=None, xdg_cache_home=None)
    assert unset.cache_dir == (Path.home() / ".cache" / "cfn").resolve()


def test_the_shared_dependency_wheels_replace_a_checkouts_older_set(tmp_path: Path) -> None:
    """Unpinned requirements: a set built before a new release and one built after have
    the same inputs; every checkout takes the shared one, so their images agree."""
    settings = Settings(cfn_cache_dir=tmp_path / "cache", cfn_state_dir=tmp_path / ".cfn")
    builder = ImageBuilder(settings, client=None)  # type: ignore[arg-type]  # no engine needed
    inputs = builder.dependency_inputs()
    mine = builder.context / "wheels" / "deps"
    shared = settings.cache_dir / "wheels" / inputs
    for folder, version in ((mine, "0.29.2"), (shared, "0.29.3")):
        folder.mkdir(parents=True)
        (folder / f"typer-{version}-py3-none-any.whl").write_bytes(b"wheel")
        (folder / ".inputs").write_text(inputs)
    report = BuildReport()
    builder.build_dependency_wheels(report)
    assert sorted(p.name for p in mine.iterdir()) == [".inputs", "typer-0.29.3-py3-none-any.whl"]
    assert report.cached == ["dependency wheels"] and report.built == []
    builder.build_dependency_wheels(report)  # the same set now: nothing to do
    assert report.cached == ["dependency wheels"] * 2
