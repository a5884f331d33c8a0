"""An Agents SDK agent whose session lives in a project: python examples/openai_agents_session.py

The model is a stand-in that answers from rules (no network, no API key); everything else is
the SDK's real Runner, tools and session protocol.
"""

import asyncio
import json
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from agents import Agent, Model, ModelResponse, Runner, Usage, function_tool, set_tracing_disabled
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from demiarch_store import Store, StoreConfig
from demiarch_store.integrations.openai_agents import DemiarchSession, ModelPrice


class RuleModel(Model):
    """Asks for the weather tool when the user mentions the weather, else answers in words."""

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kw: Any
    ) -> Any:
        last = input[-1]
        if last.get("type") == "function_call_output":
            output: Any = self._text(f"It is {last['output']}.")
        elif "weather" in str(last.get("content")):
            city = str(last["content"]).rsplit(" ", 1)[-1].strip("?")
            args_json = json.dumps({"city": city})
            output = ResponseFunctionToolCall(
                id="fc_1", call_id=f"call_{city}", type="function_call",
                name="get_weather", arguments=args_json,
            )  # fmt: skip
        else:
            output = self._text(f"This session holds {len(input) - 1} earlier items.")
        usage = Usage(requests=1, input_tokens=1200, output_tokens=80, total_tokens=1280)
        return ModelResponse(output=[output], usage=usage, response_id=None)

    def _text(self, text: str) -> ResponseOutputMessage:
        part = ResponseOutputText(text=text, type="output_text", annotations=[], logprobs=[])
        return ResponseOutputMessage(
            id="msg_1", type="message", role="assistant", status="completed", content=[part]
        )

    def stream_response(self, *args: Any, **kw: Any) -> Any:
        raise NotImplementedError("this example runs Runner.run only")


@function_tool
def get_weather(city: str) -> str:
    """Return the weather in a city."""
    return f"sunny in {city}"


async def main(projects_dir: Path) -> None:
    set_tracing_disabled(True)
    agent = Agent(name="assistant", model=RuleModel(), tools=[get_weather])
    prices = {"rule-model": ModelPrice(input_per_million=Decimal("2.50"),
                                       output_per_million=Decimal("10.00"))}  # fmt: skip
    async with Store(StoreConfig(projects_dir=projects_dir)) as store:
        project = await store.create_project(name="support bot")

        # The one-line switch: instead of SQLiteSession("user-42", "conversations.db")
        session = DemiarchSession("user-42", project, prices=prices)

        for question in ("What is the weather in Paris?", "What do you remember?"):
            result = await Runner.run(agent, question, session=session)
            await session.store_run_usage(result, model="rule-model")
            print(f"> {question}\n{result.final_output}")

        # The session is a conversation of the project, its items are messages.
        async with project.read() as r:
            [conv] = await r.conversations.list()
            messages = await r.messages.list(conv.id)
            print(f"conversation {conv.title!r}: {len(messages)} messages")
            for m in messages:
                print(f"  {m.role:<22} {m.content[:60]}")
            found = await r.messages.search("paris", conversation_id=conv.id)
            print("messages mentioning Paris:", len(found))
            calls, cost = await r.llm_calls.count(), await r.llm_calls.total_cost()
            print("model calls:", calls, "cost:", cost)
        print("last item popped:", (await session.pop_item() or {}).get("role"))
        print("items left:", len(await session.get_items()))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
