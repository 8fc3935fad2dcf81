"""Anthropic's Messages API through the official SDK, streamed, one attempt per call.

System prompts go in `system`; the conversation is folded into strictly alternating
user/assistant turns, as the API requires. JSON evidence is asked for as a forced tool
call whose `input_schema` is the phase's schema: the tool input, streamed as
`input_json_delta`s, is the answer. SDK retries are off; `complete_with_retries` owns
backoff and the deadline.
"""

import time
from functools import cached_property
from typing import Any

import anthropic
import httpx2

from ai_orchestration.providers.base import (
    CancelCheck,
    ChatRequest,
    ChunkCallback,
    Completion,
    Provider,
    ProviderCancelled,
    ProviderError,
    ProviderStreamCut,
    Usage,
)
from ai_orchestration.providers.cancel import (
    CONNECT_TIMEOUT_SECONDS,
    ConnectionTracker,
    abort_when,
)
from ai_orchestration.providers.vendor_errors import (
    VendorContext,
    error_for_connection,
    error_for_status,
    error_for_timeout,
)
from ai_orchestration.tokens import MESSAGE_OVERHEAD_TOKENS, tokens_estimate

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
EVIDENCE_TOOL = "submit_evidence"
# Errors the API can send inside a 200 stream, by the HTTP status they stand for.
STREAM_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
}


class AnthropicProvider(Provider):
    name = "anthropic"
    key_setting = "ANTHROPIC_API_KEY"
    model_setting = "TOPDOG_ANTHROPIC_MODEL"
    base_url_setting = "ANTHROPIC_BASE_URL"

    def stream(
        self,
        request: ChatRequest,
        *,
        on_delta: ChunkCallback,
        should_cancel: CancelCheck,
        timeout: float,
    ) -> Completion:
        ctx = self._context(request)
        client = self._client
        arguments = self._create_arguments(request)
        if should_cancel():
            raise ProviderCancelled(f"{self.name}: cancelled before the call")
        json_mode = request.json_schema is not None
        give_up_at = time.monotonic() + timeout
        text: list[str] = []
        tool_input: list[str] = []
        tool_seen = False
        input_tokens: int | None = None
        output_tokens: int | None = None
        stop_reason: str | None = None
        finished = False
        failure: ProviderError | None = None
        # A read blocked on the socket (no headers yet, or a stalled stream) is cut by
        # the cancel watcher as soon as should_cancel() turns true (cancel.py).
        with abort_when(should_cancel, self._connections.abort):
            try:
                stream = client.messages.create(
                    **arguments,
                    stream=True,
                    timeout=anthropic.Timeout(
                        timeout, connect=min(timeout, CONNECT_TIMEOUT_SECONDS)
                    ),
                )
                with stream:
                    for event in stream:
                        if should_cancel():
                            raise ProviderCancelled(f"{self.name}: cancelled while streaming")
                        kind = event.type
                        if kind == "message_start":
                            usage = event.message.usage
                            input_tokens = _input_tokens(usage)
                            output_tokens = usage.output_tokens
                        elif kind == "content_block_start":
                            if event.content_block.type == "tool_use":
                                tool_seen = True
                        elif kind == "content_block_delta":
                            delta = event.delta
                            if delta.type == "text_delta" and delta.text:
                                text.append(delta.text)
                                if not json_mode:
                                    on_delta(delta.text)
                            elif delta.type == "input_json_delta" and delta.partial_json:
                                tool_input.append(delta.partial_json)
                                on_delta(delta.partial_json)
                        elif kind == "message_delta":
                            stop_reason = event.delta.stop_reason or stop_reason
                            if event.usage.output_tokens is not None:
                                output_tokens = event.usage.output_tokens
                            if event.usage.input_tokens is not None:
                                input_tokens = _input_tokens(event.usage)
                        elif kind == "message_stop":
                            finished = True
                        if time.monotonic() > give_up_at:
                            raise error_for_timeout(ctx, timeout)
            # Errors are built in the handlers and raised below, so that the SDK's error
            # (whose text may quote the request) is not kept as the ProviderError's context.
            except anthropic.APIError as exc:
                failure = self._error(exc, ctx, timeout)
            except httpx2.TimeoutException:
                failure = error_for_timeout(ctx, timeout)
            except httpx2.TransportError:
                failure = ProviderStreamCut(
                    f"{self.name}: the connection dropped while the answer was streaming"
                )
            if failure is not None:
                raise failure

        if not finished:
            raise ProviderStreamCut(f"{self.name}: the response stream ended before message_stop")
        if json_mode and tool_seen:
            content = "".join(tool_input) or "{}"
        else:
            content = "".join(text)
            if json_mode and content:
                on_delta(content)  # not streamed live: it could have been a preamble
        if stop_reason == "refusal" and not content:
            raise ProviderError(f"{self.name}: model {request.model!r} refused to answer")
        return Completion(
            content=content,
            usage=self._usage(request, content, input_tokens, output_tokens),
            provider=self.name,
            model=request.model,
            finish_reason=FINISH_REASONS.get(stop_reason or "", stop_reason or "stop"),
        )

    # --- building the call ---------------------------------------------------------------

    @cached_property
    def _client(self) -> anthropic.Anthropic:
        """One SDK client per provider instance, so retries reuse its connections."""
        if not self.api_key:
            raise ProviderError(
                f"{self.name} has no API key: set {self.key_setting}", retryable=False
            )
        return anthropic.Anthropic(
            api_key=self.api_key,
            base_url=self.base_url or ANTHROPIC_BASE_URL,
            max_retries=0,
            timeout=self.timeout,
            http_client=anthropic.DefaultHttpxClient(
                event_hooks={"request": [self._connections.on_request]}
            ),
        )

    @cached_property
    def _connections(self) -> ConnectionTracker:
        return ConnectionTracker()

    def _context(self, request: ChatRequest) -> VendorContext:
        return VendorContext(
            provider=self.name,
            model=request.model,
            base_url=self.base_url or ANTHROPIC_BASE_URL,
            key_setting=self.key_setting,
            model_setting=self.model_setting,
            base_url_setting=self.base_url_setting,
            secrets=(self.api_key,),
        )

    def _create_arguments(self, request: ChatRequest) -> dict[str, Any]:
        system, messages = anthropic_messages(request)
        if request.json_schema is not None and messages[-1]["role"] == "assistant":
            # A forced tool call cannot continue a prefilled assistant turn.
            messages.append({"role": "user", "content": "Continue."})
        # No `temperature`: the Messages API version this SDK speaks has none.
        arguments: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        }
        if system:
            arguments["system"] = system
        if request.json_schema is not None:
            phase = request.metadata.get("phase") or "the current phase"
            arguments["tools"] = [
                {
                    "name": EVIDENCE_TOOL,
                    "description": f"Submit the evidence that ends {phase}, as structured data.",
                    "input_schema": _object_schema(request.json_schema),
                }
            ]
            arguments["tool_choice"] = {"type": "tool", "name": EVIDENCE_TOOL}
        return arguments

    # --- reading the answer --------------------------------------------------------------

    def _usage(
        self,
        request: ChatRequest,
        content: str,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> Usage:
        if input_tokens is not None and output_tokens is not None:
            return Usage(input_tokens=input_tokens, output_tokens=output_tokens, reported=True)
        return Usage(
            input_tokens=sum(
                tokens_estimate(m.content) + MESSAGE_OVERHEAD_TOKENS for m in request.messages
            ),
            output_tokens=tokens_estimate(content),
            reported=False,
        )

    def _error(self, exc: anthropic.APIError, ctx: VendorContext, timeout: float) -> ProviderError:
        if isinstance(exc, anthropic.APITimeoutError):
            return error_for_timeout(ctx, timeout)
        if isinstance(exc, anthropic.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            return error_for_connection(ctx, f"{type(cause).__name__}: {cause}" if cause else "")
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            detail = exc.api_message or ""
            if status < 400:
                # An `error` event inside a 200 stream: its type says what went wrong.
                status = STREAM_ERROR_STATUS.get(str(exc.type or ""), 500)
            return error_for_status(ctx, status, detail=detail, headers=exc.response.headers)
        return ProviderError(f"{self.name} failed: {type(exc).__name__}", retryable=True)


def _input_tokens(usage: Any) -> int:
    """Input tokens in all: fresh, written to the prompt cache, and read from it."""
    return (
        (usage.input_tokens or 0)
        + (usage.cache_creation_input_tokens or 0)
        + (usage.cache_read_input_tokens or 0)
    )


def anthropic_messages(request: ChatRequest) -> tuple[str, list[dict[str, str]]]:
    """(system, messages) for the Messages API: system text apart, empty messages
    dropped, consecutive same-role turns merged, and a user turn first."""
    system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
    turns: list[dict[str, str]] = []
    for message in request.messages:
        if message.role == "system" or not message.content.strip():
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + message.content
        else:
            turns.append({"role": role, "content": message.content})
    if not turns:
        raise ProviderError("anthropic: the request has no user message to answer")
    if turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": "Continue."})
    return system, turns


def _object_schema(schema: dict) -> dict:
    """A tool's input is always a JSON object, so only an object schema can describe it."""
    if schema.get("type") != "object":
        raise ProviderError(
            "anthropic: JSON answers must be objects; request.json_schema has type "
            f"{schema.get('type')!r}",
        )
    return schema
