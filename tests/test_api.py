"""The public API: what ``import cfn`` offers, as httpx checks its exported names."""

from __future__ import annotations

import inspect
import subprocess
import sys

import cfn
from cfn import errors

LOOP = ["Outcome", "Settings", "TaskOptions", "new_task", "run", "run_loop"]


def test_exported_names() -> None:
    error_types = sorted(
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == "cfn.errors"
    )
    assert sorted(cfn.__all__) == sorted([*error_types, *LOOP, "__version__"])


def test_every_exported_name_is_the_object_of_its_home_module() -> None:
    from cfn.loop import app, orchestrator, state
    from cfn.settings import Settings

    homes = {
        "Outcome": orchestrator.Outcome,
        "Settings": Settings,
        "TaskOptions": state.TaskOptions,
        "new_task": app.new_task,
        "run": app.run,
        "run_loop": app.run_loop,
    }
    for name in cfn.__all__:
        value = getattr(cfn, name)
        if name in homes:
            assert value is homes[name], name
        elif name != "__version__":
            assert value is getattr(errors, name), name
            assert issubclass(value, cfn.CfnError), name
    assert inspect.iscoroutinefunction(cfn.run_loop)
    assert isinstance(cfn.__version__, str) and cfn.__version__.count(".") == 2


def test_star_import_and_dir_give_exactly_the_exported_names() -> None:
    namespace: dict[str, object] = {}
    exec("from cfn import *", namespace)  # noqa: S102 - the star import is what is tested
    assert set(namespace) - {"__builtins__"} == set(cfn.__all__)
    assert set(cfn.__all__) <= set(dir(cfn))


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        cfn.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("cfn.no_such_thing resolved")


def test_import_cfn_stays_cheap() -> None:
    # Every agent process and every `cfn` command imports the root package first.
    code = (
        "import sys, cfn; "
        "print(sorted(m for m in sys.modules if m.startswith(('cfn.', 'pydantic', 'sqlalchemy', "
        "'redis', 'fastapi'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "['cfn._version', 'cfn.errors']"


def test_new_task_validates_before_anything_runs() -> None:
    settings = cfn.Settings()
    options = cfn.new_task(settings, "Build a thing", mode="mvp")
    assert options.mode == "mvp" and options.build is True
    assert options.task_id.startswith("task-")
    assert options.workspace.endswith(options.task_id)
    for bad in ({"mode": "turbo"}, {"decision": "coin"}, {"task_id": "../etc"}):
        try:
            cfn.new_task(settings, "Build a thing", **bad)  # type: ignore[arg-type]
        except cfn.InvalidInputError:
            pass
        else:
            raise AssertionError(f"{bad} accepted")
