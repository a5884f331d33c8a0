"""A Google ADK agent whose sessions live in a project: python examples/adk_session.py

The model is a stand-in that answers from rules (no network, no API key); everything else is
ADK's real Runner, agent, tools and session service contract.
"""

import asyncio
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path

from google.adk.agents import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.genai import types

from demiarch_store import Store, StoreConfig
from demiarch_store.integrations.adk import DemiarchSessionService


class RuleLlm(BaseLlm):
    """Calls the weather tool when the user mentions the weather, else answers in words."""

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        part = llm_request.contents[-1].parts[-1]
        if part.function_response is not None:
            answer = types.Part(text=f"It is {part.function_response.response['result']}.")
        elif "weather" in (part.text or ""):
            city = (part.text or "").rsplit(" ", 1)[-1].strip("?")
            answer = types.Part(
                function_call=types.FunctionCall(name="get_weather", args={"city": city})
            )
        else:
            answer = types.Part(text=f"I remember {len(llm_request.contents) - 1} earlier turns.")
        usage = types.GenerateContentResponseUsageMetadata(
            prompt_token_count=1200, candidates_token_count=80, total_token_count=1280
        )
        yield LlmResponse(content=types.Content(role="model", parts=[answer]), usage_metadata=usage)


def get_weather(city: str) -> str:
    """Return the weather in a city."""
    return f"sunny in {city}"


async def main(projects_dir: Path) -> None:
    agent = LlmAgent(name="assistant", model=RuleLlm(model="rule-llm"), tools=[get_weather])
    async with Store(StoreConfig(projects_dir=projects_dir)) as store:
        project = await store.create_project(name="support bot")

        # The one-line switch: instead of SqliteSessionService("sessions.db")
        sessions = DemiarchSessionService(project)

        runner = Runner(agent=agent, app_name="support", session_service=sessions)
        session = await sessions.create_session(
            app_name="support", user_id="user-42", state={"user:language": "en", "topic": "weather"}
        )
        for question in ("What is the weather in Paris?", "What do you remember?"):
            message = types.Content(role="user", parts=[types.Part(text=question)])
            async for event in runner.run_async(
                user_id="user-42", session_id=session.id, new_message=message
            ):
                if event.is_final_response() and event.content and event.content.parts:
                    print(f"> {question}\n{event.content.parts[0].text}")

        again = await sessions.get_session(
            app_name="support", user_id="user-42", session_id=session.id
        )
        assert again is not None
        print("events:", len(again.events), "state:", again.state)
        other = await sessions.create_session(app_name="support", user_id="user-42")
        print("a new session of the same user sees:", other.state)

        # Each session is a conversation of the project, its events are messages.
        async with project.read() as r:
            for conv in await r.conversations.list():
                roles = [m.role for m in await r.messages.list(conv.id)]
                which = "first" if conv.meta["session_id"] == session.id else "second"
                print(f"conversation {which}: {len(roles)} messages {roles}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
