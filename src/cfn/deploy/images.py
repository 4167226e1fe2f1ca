"""Building cfn's images with no image registry in reach (the seed's build-from-linux.sh).

Three steps, each skipped when its inputs have not changed:

1. **base**: ``debootstrap --variant=minbase --include=python3,... bookworm DIR``
   (Debian's own mirror, the default: no mirror argument), then ``podman
   import`` as ``cfn-python:bookworm``. The package list holds everything the
   images need (python3 and venv, the seed's tools bash, curl, jq, sqlite3,
   redis-cli, and redis-server for the test stack), so no build step needs a
   network. The image carries the sha256 of its inputs as label ``cfn.inputs``.
2. **wheels**: ``pip wheel`` on the host builds cfn's wheel and collects its
   dependencies' wheels (same Python 3.11, same glibc) into a build context
   under ``<state>/images/context``; inside the build ``pip install --no-index``
   installs them, since pip in a build container cannot reach the registry.
3. **images**: ``cfn-agent``, ``cfn-orchestrator`` and ``cfn-redis`` from
   ``deploy/Dockerfile.*`` through the Docker API (Podman's), tagged
   ``cfn.inputs`` too, so a warm build with nothing changed builds nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfn.errors import CfnError, InvalidInputError
from cfn.settings import Settings
from cfn.system.podman import PodmanService, run_to_end

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

SUITE = "bookworm"
BASE_IMAGE = "cfn-python:bookworm"
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "bash",
    "curl",
    "jq",
    "sqlite3",
    "redis-tools",
    "redis-server",
    "ca-certificates",
)
#: Bump when the recipe changes in a way the inputs below do not show.
RECIPE = "1"
LABEL = "cfn.inputs"
#: The shared cfn wheels (``<cache>/wheels/cfn-<sources' sha256>``) and how many are kept.
CFN_WHEEL_PREFIX = "cfn-"
CFN_WHEELS_KEPT = 8
#: SOURCE_DATE_EPOCH for the cfn wheel: 1980-01-01, the earliest time a zip stores.
WHEEL_EPOCH = "315532800"
#: The setuptools major version pyproject.toml's [build-system] asks for (">=77").
SETUPTOOLS_MAJOR = 77
DOCKERFILES = {
    "agent": "Dockerfile.agent",
    "orchestrator": "Dockerfile.orchestrator",
    "redis": "Dockerfile.redis",
}
ALL_IMAGES = ("agent", "orchestrator", "redis")

Progress = Callable[[str, str], None]


class ImageBuildError(CfnError):
    """An image could not be built; the message says which step and why."""


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _sha(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _tree_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def _tree_hash(root: Path, files: Iterable[Path]) -> str:
    return _sha(part for p in files for part in (str(p.relative_to(root)).encode(), p.read_bytes()))


def _complete(folder: Path, inputs: str) -> bool:
    """Whether ``folder`` holds a finished set of wheels built from ``inputs``."""
    stamp = folder / ".inputs"
    try:
        return stamp.read_text() == inputs
    except OSError:
        return False


def _listing(folder: Path) -> list[tuple[str, int]]:
    """The names and sizes of a folder's wheels: what tells two sets apart."""
    return sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())


def _share(built: Path, shared: Path) -> None:
    """Copy freshly built wheels into the machine's cache, atomically.

    The copy is made beside its final place and renamed into it, so another checkout
    building at the same time finds either nothing or a complete set; whoever
    renames second drops its copy. A cache that cannot be written costs only speed.
    """
    try:
        shared.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".wheels-", dir=shared.parent))
    except OSError as exc:
        log.warning("cannot cache the wheels in %s: %s", shared.parent, exc)
        return
    try:
        shutil.copytree(built, scratch / "w")
        os.replace(scratch / "w", shared)
    except OSError as exc:
        if not _complete(shared, (built / ".inputs").read_text()):
            log.warning("cannot cache the wheels in %s: %s", shared, exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _prune(folder: Path, prefix: str, keep: int) -> None:
    """Remove all but the ``keep`` newest entries of ``folder`` named ``prefix...``."""
    try:
        found = sorted(
            (p for p in folder.iterdir() if p.name.startswith(prefix)),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
    except OSError:
        return
    for old in found[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def build_cfn_wheel(python: str, root: Path, out: Path, *, scratch: Path) -> None:
    """Build cfn's own wheel from the checkout at ``root`` into ``out``.

    It is built from a copy (setuptools would leave build/ and *.egg-info in the
    checkout), with a fixed SOURCE_DATE_EPOCH that stamps every zip entry alike: the
    same sources give the same wheel bytes in every checkout, so the images built
    from them stay up to date across clones.
    """
    with tempfile.TemporaryDirectory(dir=scratch) as work:
        copy = Path(work) / "src"
        copy.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, copy / name)
        shutil.copytree(
            root / "src",
            copy / "src",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
        flags = ["--quiet", "--no-deps", "--wheel-dir", str(out)]
        if _builds_here(python):
            flags.append("--no-build-isolation")
        _run(
            [python, "-m", "pip", "wheel", *flags, str(copy)],
            "pip wheel (cfn)",
            env={**os.environ, "SOURCE_DATE_EPOCH": WHEEL_EPOCH},
        )


def _builds_here(python: str) -> bool:
    """Whether ``python`` (this interpreter) has the build backend pyproject.toml asks for.

    Then pip builds the wheel with it instead of installing setuptools into a fresh
    build environment first (about 4 s of CPU each time; the dev extra installs it).
    """
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        return False
    try:
        setuptools = importlib.metadata.version("setuptools")
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    major = setuptools.split(".", 1)[0]
    return major.isdigit() and int(major) >= SETUPTOOLS_MAJOR


def _run(argv: list[str], what: str, env: dict[str, str] | None = None, **kw: Any) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, **kw)
    except OSError as exc:
        raise ImageBuildError(f"{what}: could not run {argv[0]}: {exc}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ImageBuildError(f"{what} failed (exit {result.returncode}): " + " | ".join(tail))


class ImageBuilder:
    """Builds the base image, the wheels and the images; skips what is up to date."""

    def __init__(
        self,
        settings: Settings,
        client: docker.DockerClient,
        *,
        progress: Progress | None = None,
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.client = client
        self.progress = progress or (lambda step, message: log.info("%s: %s", step, message))
        self.python = python
        self.root = settings.project_root
        self.dir = settings.state_dir / "images"
        self.context = self.dir / "context"

    # --- helpers -------------------------------------------------------------------------

    def _label(self, image: str) -> str | None:
        import docker.errors

        try:
            found = self.client.images.get(image)
        except docker.errors.ImageNotFound:
            return None
        labels = found.labels or {}
        value = labels.get(LABEL)
        return value if isinstance(value, str) else None

    # --- 1. base ------------------------------------------------------------------------

    def base_inputs(self) -> str:
        return _sha([RECIPE.encode(), SUITE.encode(), ",".join(BASE_PACKAGES).encode()])

    def build_base(self, report: BuildReport, *, force: bool = False) -> None:
        want = self.base_inputs()
        if not force and self._label(BASE_IMAGE) == want:
            report.cached.append(BASE_IMAGE)
            self.progress("base", f"{BASE_IMAGE} is up to date")
            return
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            raise ImageBuildError(
                "debootstrap is not installed: run scripts/bootstrap.sh (apt package debootstrap)"
            )
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=self.dir))
        try:
            self.progress("base", f"debootstrap {SUITE} (minbase + {len(BASE_PACKAGES)} packages)")
            _run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    SUITE,
                    str(rootfs),
                ],
                "debootstrap",
            )
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (rootfs / junk).glob("*"):
                    if item.is_file():
                        item.unlink()
            self.progress("base", f"podman import as {BASE_IMAGE}")
            service = PodmanService(self.settings)
            tar = subprocess.Popen(
                ["tar", "--numeric-owner", "--one-file-system", "-C", str(rootfs), "-cf", "-", "."],
                stdout=subprocess.PIPE,
            )
            try:
                _run(
                    [
                        service.podman_bin(),
                        "import",
                        "--change",
                        f"LABEL {LABEL}={want}",
                        "--change",
                        'CMD ["/bin/bash"]',
                        "-",
                        BASE_IMAGE,
                    ],
                    "podman import",
                    env=service.env(),
                    stdin=tar.stdout,
                )
            finally:
                if tar.stdout is not None:
                    tar.stdout.close()
                tar.wait()
        finally:
            # debootstrap leaves root-owned device nodes; rmtree handles them as root.
            shutil.rmtree(rootfs, ignore_errors=True)
        report.built.append(BASE_IMAGE)
        report.seconds[BASE_IMAGE] = round(time.monotonic() - started, 1)

    # --- 2. wheels ----------------------------------------------------------------------

    def dependencies(self) -> list[str]:
        data = tomllib.loads((self.root / "pyproject.toml").read_text())
        deps = data.get("project", {}).get("dependencies", [])
        return [str(d) for d in deps]

    def _complete_for_image(self, deps_dir: Path, rounds: int = 8) -> None:
        """Add the wheels the image's Python needs beyond the host's.

        The host resolves for its own Python (3.11.7 here); the image has Debian's
        3.11.2, for which some markers differ (redis needs async-timeout below 3.11.3).
        pip's --python-version does not evaluate python_full_version, so ask the image:
        a dry-run install against the wheel directory names what is missing.
        """
        for _ in range(rounds):
            status, output = run_to_end(
                self.client,
                BASE_IMAGE,
                timeout=600,
                command=[
                    "sh",
                    "-c",
                    "python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --dry-run "
                    "--no-index --find-links /wheels -r /wheels/requirements.txt",
                ],
                volumes={str(deps_dir): {"bind": "/wheels", "mode": "ro"}},
                network_mode="none",
            )
            if status == 0:
                return
            text = output.decode(errors="replace")
            match = re.search(r"No matching distribution found for ([^;\s]+)", text)
            if match is None:
                raise ImageBuildError(
                    "the dependency wheels do not install in the base image: "
                    + " | ".join(text.strip().splitlines()[-3:])
                )
            missing = match.group(1)
            self.progress("wheels", f"the image's Python also needs {missing}")
            _run(
                [self.python, "-m", "pip", "wheel", "-q", "--wheel-dir", str(deps_dir), missing],
                f"pip wheel {missing}",
            )
        raise ImageBuildError(f"the dependency wheels were still incomplete after {rounds} rounds")

    def build_wheels(self, report: BuildReport) -> None:
        started = time.monotonic()
        self.build_dependency_wheels(report)
        self.build_cfn_wheel(report)
        report.seconds["wheels"] = round(time.monotonic() - started, 1)

    def dependency_inputs(self) -> str:
        return _sha([RECIPE.encode(), *(d.encode() for d in self.dependencies())])

    def build_dependency_wheels(self, report: BuildReport) -> None:
        """The dependencies' wheels into the build context: kept, from the cache, or built."""
        deps_dir = self.context / "wheels" / "deps"
        deps = self.dependencies()
        deps_want = self.dependency_inputs()
        stamp = deps_dir / ".inputs"
        shared = self.settings.cache_dir / "wheels" / deps_want
        # The machine's shared set wins over this checkout's: the requirements are not
        # pinned, so two sets for the same inputs may differ by a release made between
        # their builds, and images built from each would replace each other's.
        if _complete(deps_dir, deps_want) and not (
            _complete(shared, deps_want) and _listing(shared) != _listing(deps_dir)
        ):
            report.cached.append("dependency wheels")
        elif _complete(shared, deps_want):
            self.progress("wheels", f"dependency wheels from {shared}")
            shutil.rmtree(deps_dir, ignore_errors=True)
            shutil.copytree(shared, deps_dir)
            report.cached.append("dependency wheels")
        else:
            self.progress("wheels", f"pip wheel: {len(deps)} dependencies and theirs")
            shutil.rmtree(deps_dir, ignore_errors=True)
            deps_dir.mkdir(parents=True)
            _run(
                [self.python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(deps_dir), *deps],
                "pip wheel (dependencies)",
            )
            (deps_dir / "requirements.txt").write_text("\n".join(deps) + "\n")
            self._complete_for_image(deps_dir)
            stamp.write_text(deps_want)
            _share(deps_dir, shared)
            report.built.append("dependency wheels")

    def build_cfn_wheel(self, report: BuildReport) -> None:
        """cfn's own wheel into the build context: kept, taken from the cache, or built."""
        cfn_dir = self.context / "wheels" / "cfn"
        sources = [self.root / "pyproject.toml", self.root / "README.md"]
        sources += _tree_files(self.root / "src")
        cfn_want = _tree_hash(self.root, sources)
        stamp = cfn_dir / ".inputs"
        # Every clone of one commit has the same sources, so the wheel is shared too
        # (a fresh clone of a tested commit builds nothing); the newest few are kept.
        shared = self.settings.cache_dir / "wheels" / f"{CFN_WHEEL_PREFIX}{cfn_want}"
        if _complete(cfn_dir, cfn_want):
            report.cached.append("cfn wheel")
        elif _complete(shared, cfn_want):
            self.progress("wheels", f"cfn wheel from {shared}")
            shutil.rmtree(cfn_dir, ignore_errors=True)
            shutil.copytree(shared, cfn_dir)
            report.cached.append("cfn wheel")
        else:
            self.progress("wheels", "pip wheel: cfn")
            shutil.rmtree(cfn_dir, ignore_errors=True)
            cfn_dir.mkdir(parents=True)
            build_cfn_wheel(self.python, self.root, cfn_dir, scratch=self.dir)
            stamp.write_text(cfn_want)
            _share(cfn_dir, shared)
            _prune(shared.parent, CFN_WHEEL_PREFIX, CFN_WHEELS_KEPT)
            report.built.append("cfn wheel")

    # --- 3. images ----------------------------------------------------------------------

    def image_name(self, kind: str) -> str:
        return {
            "agent": self.settings.cfn_agent_image,
            "orchestrator": self.settings.cfn_orchestrator_image,
            "redis": "cfn-redis:latest",
        }[kind]

    def context_for(self, kind: str) -> Path:
        """The agent and orchestrator get the wheels; the Redis image an empty context."""
        return self.dir / "redis-context" if kind == "redis" else self.context

    def _context_inputs(self, context: Path, dockerfile: Path, base_id: str) -> str:
        files = [p for p in _tree_files(context / "wheels") if p.name != ".inputs"]
        return _sha(
            [
                RECIPE.encode(),
                base_id.encode(),
                dockerfile.read_bytes(),
                _tree_hash(context, files).encode(),
            ]
        )

    def build_image(self, kind: str, report: BuildReport, *, force: bool = False) -> None:
        import docker.errors

        source = self.root / "deploy" / DOCKERFILES[kind]
        if not source.is_file():
            raise ImageBuildError(f"{source} is missing")
        context = self.context_for(kind)
        context.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, context / DOCKERFILES[kind])
        base_id = str(self.client.images.get(BASE_IMAGE).id)
        want = self._context_inputs(context, source, base_id)
        image = self.image_name(kind)
        if not force and self._label(image) == want:
            report.cached.append(image)
            self.progress(kind, f"{image} is up to date")
            return
        started = time.monotonic()
        self.progress(kind, f"building {image}")
        previous = self._image_id(image)
        try:
            stream = self.client.api.build(
                path=str(context),
                dockerfile=DOCKERFILES[kind],
                tag=image,
                buildargs={"BASE_IMAGE": BASE_IMAGE},
                labels={LABEL: want},
                rm=True,
                pull=False,
                decode=True,
            )
            for chunk in stream:
                if "error" in chunk:
                    raise ImageBuildError(f"building {image}: {chunk['error']}".strip())
                line = str(chunk.get("stream", "")).strip()
                if line.startswith("STEP") or line.startswith("Step"):
                    self.progress(kind, line[:120])
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"building {image}: {exc.explanation or exc}") from None
        if self._label(image) != want:
            raise ImageBuildError(f"building {image} ended without the image (see the engine log)")
        report.built.append(image)
        report.seconds[image] = round(time.monotonic() - started, 1)
        if previous is not None and previous != self._image_id(image):
            # The image this build replaced, now untagged: remove it unless a container
            # still uses it (each source change would otherwise leave one behind).
            with contextlib.suppress(docker.errors.APIError):
                self.client.images.remove(previous)

    def _image_id(self, image: str) -> str | None:
        import docker.errors

        try:
            return str(self.client.images.get(image).id)
        except docker.errors.ImageNotFound:
            return None

    def _write_context_files(self) -> None:
        self.context.mkdir(parents=True, exist_ok=True)
        (self.context / ".dockerignore").write_text(".inputs\n**/.inputs\n")

    def build(
        self, images: Iterable[str] = ALL_IMAGES, *, force_base: bool = False, force: bool = False
    ) -> BuildReport:
        kinds = list(images)
        unknown = [k for k in kinds if k not in DOCKERFILES]
        if unknown:
            raise InvalidInputError(
                f"unknown image {unknown[0]!r}: choose from {', '.join(ALL_IMAGES)}"
            )
        report = BuildReport()
        started = time.monotonic()
        self.build_base(report, force=force_base)
        self._write_context_files()
        if any(k in ("agent", "orchestrator") for k in kinds):
            self.build_wheels(report)
        for kind in kinds:
            self.build_image(kind, report, force=force)
        report.seconds["total"] = round(time.monotonic() - started, 1)
        (self.dir / "last-build.json").write_text(
            json.dumps(
                {"built": report.built, "cached": report.cached, "seconds": report.seconds},
                indent=2,
            )
        )
        return report
