"""The suite's fake OpenAI-compatible server: the public ``llmspell.testing.FakeOpenAI``."""

from llmspell.testing.fake_openai import FakeOpenAI, content_events, tool_call_events

__all__ = ["FakeOpenAI", "content_events", "tool_call_events"]
