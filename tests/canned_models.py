"""Fake models for the frameworks' runners: canned answers and tool calls, no network.

``CannedModel`` is an OpenAI Agents SDK ``Model``; ``CannedLlm`` an ADK ``BaseLlm``. Both answer
the same way: a user message that mentions the weather gets a call of the ``get_weather`` tool,
a tool's result gets a sentence with it, and anything else is echoed back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from agents import Model, ModelResponse, ModelSettings, Tool, Usage
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from agents.models.interface import ModelTracing
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

INPUT_TOKENS = 120
OUTPUT_TOKENS = 30


def _last_text(input: str | list[TResponseInputItem]) -> tuple[str, str]:
    """Return (kind, text) of the newest input item: ("user", text) or ("tool", output)."""
    if isinstance(input, str):
        return "user", input
    last: Any = input[-1]
    if last.get("type") == "function_call_output":
        return "tool", str(last.get("output"))
    content = last.get("content")
    if isinstance(content, list):
        content = " ".join(str(part.get("text", "")) for part in content)
    return "user", str(content)


class CannedModel(Model):
    """An Agents SDK model that answers from rules, counting the calls and inputs it saw."""

    def __init__(self) -> None:
        self.inputs: list[list[Any]] = []
        self.calls = 0

    def _answer(self, input: str | list[TResponseInputItem]) -> list[TResponseOutputItem]:
        self.calls += 1
        self.inputs.append([input] if isinstance(input, str) else list(input))
        kind, text = _last_text(input)
        if kind == "tool":
            reply = f"The weather: {text}."
        elif "weather" in text.lower():
            city = text.rsplit(" ", 1)[-1].strip("?.!")
            return [
                ResponseFunctionToolCall(
                    id=f"fc_{self.calls}",
                    call_id=f"call_{self.calls}",
                    type="function_call",
                    name="get_weather",
                    arguments=json.dumps({"city": city}),
                )
            ]
        else:
            reply = f"You said: {text}"
        return [
            ResponseOutputMessage(
                id=f"msg_{self.calls}",
                type="message",
                role="assistant",
                status="completed",
                content=[
                    ResponseOutputText(text=reply, type="output_text", annotations=[], logprobs=[])
                ],
            )
        ]

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> ModelResponse:
        usage = Usage(
            requests=1,
            input_tokens=INPUT_TOKENS,
            output_tokens=OUTPUT_TOKENS,
            total_tokens=INPUT_TOKENS + OUTPUT_TOKENS,
        )
        return ModelResponse(output=self._answer(input), usage=usage, response_id=None)

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> AsyncIterator[TResponseStreamEvent]:
        output = self._answer(input)
        for i, item in enumerate(output):
            yield ResponseOutputItemDoneEvent(
                type="response.output_item.done", item=item, output_index=i, sequence_number=i
            )
        yield ResponseCompletedEvent(
            type="response.completed",
            sequence_number=len(output),
            response=Response(
                id=f"resp_{self.calls}",
                created_at=0,
                model="canned",
                object="response",
                output=output,
                tool_choice="auto",
                tools=[],
                parallel_tool_calls=False,
                usage=ResponseUsage(
                    input_tokens=INPUT_TOKENS,
                    output_tokens=OUTPUT_TOKENS,
                    total_tokens=INPUT_TOKENS + OUTPUT_TOKENS,
                    input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                    output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
                ),
            ),
        )


def get_weather(city: str) -> str:
    """Return the weather in a city (canned)."""
    return f"sunny in {city}"


def adk_llm() -> Any:
    """Return an ADK ``BaseLlm`` with the same rules (imported only by the ADK tests)."""
    from google.adk.models.base_llm import BaseLlm
    from google.adk.models.llm_request import LlmRequest
    from google.adk.models.llm_response import LlmResponse
    from google.genai import types

    class CannedLlm(BaseLlm):
        """An ADK model that answers from rules, with no network."""

        calls: int = 0

        async def generate_content_async(
            self, llm_request: LlmRequest, stream: bool = False
        ) -> AsyncGenerator[LlmResponse, None]:
            self.calls += 1
            last = llm_request.contents[-1]
            part = last.parts[-1] if last.parts else None
            usage = types.GenerateContentResponseUsageMetadata(
                prompt_token_count=INPUT_TOKENS,
                candidates_token_count=OUTPUT_TOKENS,
                total_token_count=INPUT_TOKENS + OUTPUT_TOKENS,
            )
            if part is not None and part.function_response is not None:
                result = part.function_response.response or {}
                text = f"The weather: {result.get('result', result)}."
                content = types.Content(role="model", parts=[types.Part(text=text)])
            else:
                said = (part.text if part is not None else "") or ""
                if "weather" in said.lower():
                    city = said.rsplit(" ", 1)[-1].strip("?.!")
                    call = types.FunctionCall(name="get_weather", args={"city": city})
                    content = types.Content(role="model", parts=[types.Part(function_call=call)])
                else:
                    content = types.Content(
                        role="model", parts=[types.Part(text=f"You said: {said}")]
                    )
            yield LlmResponse(content=content, usage_metadata=usage)

    return CannedLlm(model="canned")
