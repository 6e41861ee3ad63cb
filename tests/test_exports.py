"""The public surface: ``llmspell`` re-exports its API from one place."""

from __future__ import annotations

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
