"""The public surface: ``llmspell`` re-exports its API from one place."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

import llmspell


def test_all_is_sorted_and_complete() -> None:
    assert llmspell.__all__ == sorted(llmspell.__all__)
    for name in llmspell.__all__:
        assert hasattr(llmspell, name), name


def test_public_objects_claim_the_public_module() -> None:
    for name in llmspell.__all__:
        obj = getattr(llmspell, name)
        if isinstance(obj, type):
            assert obj.__module__ == "llmspell", name


def test_api_names_from_the_contract_exist() -> None:
    for name in (
        "Runtime",
        "AsyncRuntime",
        "Task",
        "Strategy",
        "Limits",
        "LlmspellError",
        "TaskFailed",
        "TaskCancelled",
        "TaskTimeout",
        "MessageError",
        "ScriptError",
        "ResourceLimitExceeded",
        "RuntimeClosed",
        "RuntimeDegraded",
    ):
        assert name in llmspell.__all__


def test_error_tree() -> None:
    assert issubclass(llmspell.ScriptError, llmspell.TaskFailed)
    assert issubclass(llmspell.ResourceLimitExceeded, llmspell.TaskFailed)
    for cls in (
        llmspell.TaskFailed,
        llmspell.TaskCancelled,
        llmspell.TaskTimeout,
        llmspell.MessageError,
        llmspell.RuntimeClosed,
        llmspell.RuntimeDegraded,
    ):
        assert issubclass(cls, llmspell.LlmspellError)
    assert not issubclass(llmspell.TaskTimeout, TimeoutError)


def test_testing_exports_the_fake_openai_server() -> None:
    import llmspell.testing as testing
    from llmspell.testing.fake_openai import FakeOpenAI

    assert "FakeOpenAI" in testing.__all__
    assert testing.FakeOpenAI is FakeOpenAI
    assert testing.__all__ == sorted(testing.__all__)


def _public_names(module: ModuleType) -> set[str]:
    """What a user finds in the module: its names without a leading ``_`` that
    are not submodules nor what it imported for its own use: for a package (a
    facade re-exporting), objects from outside llmspell; for a plain module,
    anything defined elsewhere."""
    package = hasattr(module, "__path__")
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value) or name == "annotations":
            continue
        home = getattr(value, "__module__", None) or ""
        if home == "typing" or (home and not home.startswith("llmspell")):
            continue  # an import the module uses itself (Any, httpx, ...)
        if not package and home and home not in (module.__name__, "llmspell"):
            continue
        if not package and home == "llmspell" and not _defined_in(module, name):
            continue
        names.add(name)
    return names


def _defined_in(module: ModuleType, name: str) -> bool:
    """``name`` is defined (a class or def) in ``module``'s own source."""
    source = Path(module.__file__ or "").read_text()
    return re.search(rf"^(class|def) {name}\b", source, re.M) is not None


@pytest.mark.parametrize("name", ["llmspell", "llmspell.agents", "llmspell.testing"])
def test_exports_are_checked_both_ways(name: str) -> None:
    """Every name in ``__all__`` is there, and every public name is in ``__all__``."""
    module = importlib.import_module(name)
    exported = set(module.__all__)
    for export in sorted(exported):
        assert getattr(module, export, None) is not None, f"{name}.{export} is in __all__ only"
    assert _public_names(module) <= exported, sorted(_public_names(module) - exported)
    assert module.__all__ == sorted(module.__all__)


def test_subscription_is_exported() -> None:
    assert llmspell.Subscription.__name__ == "Subscription"
    assert "Subscription" in llmspell.__all__


def test_every_public_error_is_in_the_error_tree() -> None:
    """The tree in ``_exceptions.py``'s docstring names every public error of
    ``llmspell``, ``llmspell.agents`` and ``llmspell.testing``."""
    from llmspell import _exceptions

    tree = _exceptions.__doc__ or ""
    drawn = set(re.findall(r"[├└]── (\w+)", tree)) | {"LlmspellError"}
    errors = set()
    for name in ("llmspell", "llmspell.agents", "llmspell.testing"):
        module = importlib.import_module(name)
        for export in module.__all__:
            obj = getattr(module, export)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                errors.add(export)
    assert errors == drawn
    root = Path(llmspell.__file__).parent
    declared = {
        m
        for f in root.rglob("*.py")
        for m in re.findall(r"^class (\w+)\((?:\w+Error|LlmspellError)\)", f.read_text(), re.M)
    }
    assert declared - drawn <= {"AgentProtocolError", "RegistryError"}  # internal, caught inside


def test_public_names_have_one_public_path() -> None:
    """``llmspell.Runtime`` (and every other name of ``llmspell``) is defined in a
    private module: ``llmspell`` is the one public path to it."""
    import sys

    homes = {}
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("llmspell.") or not getattr(module, "__file__", None):
            continue
        for name in llmspell.__all__:
            if getattr(module, name, None) is getattr(llmspell, name) and _defined_in(module, name):
                homes[name] = module_name
    assert set(homes) == set(llmspell.__all__), set(llmspell.__all__) - set(homes)
    for name, home in homes.items():
        assert any(part.startswith("_") for part in home.split(".")[1:]), (name, home)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("llmspell.runtime")
