"""OpenAI chat completions through the official SDK, streamed, one attempt per call.

The SDK's own retries are off (`max_retries=0`): `complete_with_retries` owns backoff
and the deadline, so every provider retries the same way. JSON evidence uses
`response_format` json_schema with `strict: false`, which OpenAI and the common
OpenAI-compatible servers (vLLM, llama.cpp, Ollama) accept for an arbitrary schema,
unlike strict mode, and without json_object's "mention JSON in the prompt" rule.
"""

import json
import re
import time
from functools import cached_property
from typing import Any

import openai

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
    redact,
)
from ai_orchestration.tokens import MESSAGE_OVERHEAD_TOKENS, tokens_estimate

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider(Provider):
    name = "openai"
    default_base_url = OPENAI_BASE_URL
    key_setting = "OPENAI_API_KEY"
    model_setting = "TOPDOG_OPENAI_MODEL"
    base_url_setting = "OPENAI_BASE_URL"
    # OpenAI's current name for the answer limit (the o-series reject max_tokens).
    max_tokens_param = "max_completion_tokens"

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
        if should_cancel():
            raise ProviderCancelled(f"{self.name}: cancelled before the call")
        give_up_at = time.monotonic() + timeout
        parts: list[str] = []
        refusal: list[str] = []
        finish_reason: str | None = None
        usage = None
        opened = False
        failure: ProviderError | None = None
        # A read blocked on the socket (no headers yet, or a stalled stream) is cut by
        # the cancel watcher as soon as should_cancel() turns true (cancel.py).
        with abort_when(should_cancel, self._connections.abort):
            try:
                stream = client.chat.completions.create(
                    **self._create_arguments(request),
                    stream=True,
                    timeout=openai.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_SECONDS)),
                )
                opened = True
                with stream:
                    for chunk in stream:
                        if should_cancel():
                            raise ProviderCancelled(f"{self.name}: cancelled while streaming")
                        if chunk.usage is not None:
                            usage = chunk.usage
                        for choice in chunk.choices:
                            if choice.index != 0:
                                continue
                            delta = choice.delta
                            if delta is not None and delta.content:
                                parts.append(delta.content)
                                on_delta(delta.content)
                            if delta is not None and delta.refusal:
                                refusal.append(delta.refusal)
                            if choice.finish_reason:
                                finish_reason = choice.finish_reason
                        if time.monotonic() > give_up_at:
                            raise error_for_timeout(ctx, timeout)
            except openai.APIError as exc:
                # Built here, raised below: the SDK's error (whose text may quote the key
                # back) must not ride along as the ProviderError's __context__.
                failure = self._error(exc, ctx, timeout, streaming=opened)
            if failure is not None:
                raise failure

        if finish_reason is None:
            raise ProviderStreamCut(
                f"{self.name}: the response stream ended before the model finished "
                f"(after {len(parts)} chunks)"
            )
        content = "".join(parts)
        if not content and refusal:
            raise ProviderError(
                f"{self.name}: model {request.model!r} refused: {''.join(refusal)[:300]}",
                retryable=False,
            )
        return Completion(
            content=content,
            usage=self._usage(request, content, usage),
            provider=self.name,
            model=request.model,
            finish_reason=finish_reason,
        )

    # --- building the call ---------------------------------------------------------------

    @cached_property
    def _client(self) -> openai.OpenAI:
        """One SDK client per provider instance, so retries reuse its connections."""
        self._require_configuration()
        return openai.OpenAI(
            api_key=self.api_key,
            base_url=self.base_url or self.default_base_url,
            max_retries=0,
            timeout=self.timeout,
            http_client=openai.DefaultHttpxClient(
                event_hooks={"request": [self._connections.on_request]}
            ),
        )

    @cached_property
    def _connections(self) -> ConnectionTracker:
        return ConnectionTracker()

    def _require_configuration(self) -> None:
        if not self.api_key:
            raise ProviderError(
                f"{self.name} has no API key: set {self.key_setting}", retryable=False
            )

    def _context(self, request: ChatRequest) -> VendorContext:
        return VendorContext(
            provider=self.name,
            model=request.model,
            base_url=self.base_url or self.default_base_url,
            key_setting=self.key_setting,
            model_setting=self.model_setting,
            base_url_setting=self.base_url_setting,
            secrets=(self.api_key,),
        )

    def _create_arguments(self, request: ChatRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            self.max_tokens_param: request.max_tokens,
            "stream_options": {"include_usage": True},
        }
        if request.json_schema is not None:
            arguments["response_format"] = self._response_format(request)
        return arguments

    def _response_format(self, request: ChatRequest) -> dict[str, Any]:
        phase = str(request.metadata.get("phase") or "answer").lower()
        return {
            "type": "json_schema",
            "json_schema": {
                "name": re.sub(r"[^a-zA-Z0-9_-]", "_", f"{phase}_evidence")[:64],
                "schema": request.json_schema,
                "strict": False,
            },
        }

    # --- reading the answer --------------------------------------------------------------

    def _usage(self, request: ChatRequest, content: str, reported: Any) -> Usage:
        if reported is not None and reported.prompt_tokens is not None:
            return Usage(
                input_tokens=int(reported.prompt_tokens or 0),
                output_tokens=int(reported.completion_tokens or 0),
                reported=True,
            )
        return Usage(
            input_tokens=sum(
                tokens_estimate(m.content) + MESSAGE_OVERHEAD_TOKENS for m in request.messages
            ),
            output_tokens=tokens_estimate(content),
            reported=False,
        )

    def _error(
        self, exc: openai.APIError, ctx: VendorContext, timeout: float, *, streaming: bool = False
    ) -> ProviderError:
        if isinstance(exc, openai.APITimeoutError):
            return error_for_timeout(ctx, timeout)
        if isinstance(exc, openai.APIConnectionError):
            if streaming:
                return ProviderStreamCut(
                    f"{self.name}: the connection dropped while the answer was streaming"
                )
            return error_for_connection(ctx, _cause(exc))
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code == 429 and exc.code == "insufficient_quota":
                # Waiting does not refill a quota: say so instead of retrying.
                return ProviderError(
                    f"{self.name} says the account is out of quota (429 insufficient_quota): "
                    f"check the billing of the project behind {self.key_setting}",
                    retryable=False,
                    status=429,
                )
            return error_for_status(
                ctx,
                exc.status_code,
                detail=_vendor_message(exc.body) or exc.message,
                headers=exc.response.headers,
            )
        # An error object sent inside an otherwise healthy stream: the server failed
        # part-way through, which another attempt may well not.
        return ProviderError(
            f"{self.name} failed while streaming: "
            f"{redact(_vendor_message(exc.body) or exc.message, ctx.secrets)[:300]}",
            retryable=True,
        )


def _vendor_message(body: object) -> str:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    if isinstance(body, str):
        return body
    return json.dumps(body) if body is not None else ""


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{type(cause).__name__}: {cause}" if cause else ""
