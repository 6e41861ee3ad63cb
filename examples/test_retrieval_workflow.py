"""A retrieval-style workflow with an agent step: a Python step retrieves
passages, a Lua step writes the prompt, an ``OpenAIChat`` agent answers.

It is a pipeline: each step gets the previous step's result as its input.
Run it: ``python examples/test_retrieval_workflow.py ["your question"]``.
"""

from __future__ import annotations

import sys
from typing import Any

from llm_endpoint import DOCS, Endpoint, endpoint

from llmspell import CoordinationResult, Runtime

PROMPT = """
local lines = {"Answer the question from the context only.",
               "Question: " .. spell.args.question, "Context:"}
for _, doc in ipairs(spell.input) do
  table.insert(lines, "- " .. doc.text)
end
return table.concat(lines, "\\n")
"""


AGENT_STEP = {"id": "answer", "agent": "answerer", "retries": 1}


def workflow(question: str, answer_step: dict[str, Any] = AGENT_STEP) -> dict[str, Any]:
    return {
        "name": "retrieval",
        "strategy": "pipeline",
        "timeout": 120,
        "steps": [
            {
                "id": "retrieve",
                "target": "llm_endpoint:retrieve",
                "args": {"question": question},
                "retries": 1,
            },
            {
                "id": "prompt",
                "lang": "lua",
                "code": PROMPT,
                "args": {"question": question},
                "retries": 1,
            },
            answer_step,
        ],
    }


def register(rt: Runtime, ep: Endpoint) -> None:
    rt.register_agent("answerer", ep.chat(system="Answer in one sentence.", tools=[]))


def answer(rt: Runtime, question: str) -> CoordinationResult:
    return rt.run_workflow(workflow(question))


def test_the_answer_comes_from_the_retrieved_passage() -> None:
    with endpoint() as ep, Runtime() as rt:
        register(rt, ep)
        r = answer(rt, "Who wins a race between tasks?")
        assert r.ok, r.failed
        passages, prompt, reply = r.results
        assert passages[0]["id"] == "races"
        assert "Context:\n- " + DOCS["races"] in prompt
        assert reply["content"]
        if not ep.real:
            assert reply["content"] == "From the docs: " + DOCS["races"]


if __name__ == "__main__":
    question = sys.argv[1] if len(sys.argv) > 1 else "What happens when an engine crashes?"
    with endpoint() as ep, Runtime() as rt:
        register(rt, ep)
        r = answer(rt, question)
        print(r.results[-1]["content"] if r.ok else r.failed)
