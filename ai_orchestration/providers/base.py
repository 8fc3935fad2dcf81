"""The provider interface, its value types, and the retry loop every adapter shares.

Adapters (openai.py, anthropic.py, local.py, offline.py) translate one `ChatRequest` into
one vendor call and the vendor's errors into `ProviderError`s; `complete_with_retries`
owns backoff, Retry-After, the overall deadline and cancellation, so every provider
fails the same way. A vendor SDK is imported only inside its own adapter.
"""

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system, user or assistant
    content: str


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    reported: bool = True  # False when estimated offline because the provider said nothing


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    temperature: float = 0.2
    max_tokens: int = 4096
    # JSON Schema of the answer, when the phase wants structured evidence.
    json_schema: dict | None = None
    # Facts an adapter may use but a vendor never sees (the offline provider builds its
    # evidence from these): phase, role, requirements, feedback, workflow_id.
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    content: str
    usage: Usage
    provider: str
    model: str
    finish_reason: str = "stop"
    attempts: int = 1


class ProviderError(Exception):
    """A provider call failed. `retryable` errors are retried until the deadline."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.attempts = attempts


class ProviderCancelled(ProviderError):
    """The run was cancelled while the call was in progress."""


class ProviderStreamCut(ProviderError):
    """The stream ended before the provider said it was finished."""

    def __init__(self, message: str = "the response stream was cut before it finished") -> None:
        super().__init__(message, retryable=True)


ChunkCallback = Callable[[str], None]
# Deltas are tagged with the attempt they belong to: a retried call streams from the
# start again, so a listener resets what it shows when the attempt number changes.
DeltaCallback = Callable[[str, int], None]
CancelCheck = Callable[[], bool]


class Provider(ABC):
    """One LLM vendor. Instances are cheap; build one per call site."""

    name: str = ""

    def __init__(
        self,
        *,
        api_key: str = "",
        base_url: str = "",
        timeout: float = 60.0,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url
        self.timeout = timeout

    @abstractmethod
    def stream(
        self,
        request: ChatRequest,
        *,
        on_delta: ChunkCallback,
        should_cancel: CancelCheck,
        timeout: float,
    ) -> Completion:
        """One attempt: stream the answer, calling `on_delta` per chunk, within `timeout`.

        Raise ProviderError (retryable or not) on failure, ProviderStreamCut if the
        stream ends without the provider's end marker, ProviderCancelled if
        `should_cancel()` turns true between chunks.
        """


class CallObservation(Protocol):
    """What an observer learns of one model call while it runs."""

    def attempt_failed(self, exc: Exception) -> None: ...

    def completed(self, completion: Completion) -> None: ...


# An observer wraps one model call (all its attempts): called with the provider's name and
# the request, it returns a context manager yielding a CallObservation.
CallObserver = Callable[[str, ChatRequest], AbstractContextManager[CallObservation]]
_call_observers: list[CallObserver] = []


def provider_call_observer_register(observer: CallObserver) -> None:
    """Show every model call to `observer` (once; registered at start-up, e.g. by the
    project's observability in its AppConfig.ready())."""
    if observer not in _call_observers:
        _call_observers.append(observer)


class _Observations:
    def __init__(self, observations: list[CallObservation]) -> None:
        self.observations = observations

    def attempt_failed(self, exc: Exception) -> None:
        for observation in self.observations:
            observation.attempt_failed(exc)

    def completed(self, completion: Completion) -> None:
        for observation in self.observations:
            observation.completed(completion)


@contextmanager
def _observed(provider_name: str, request: ChatRequest) -> Iterator[_Observations]:
    with ExitStack() as stack:
        yield _Observations(
            [stack.enter_context(observe(provider_name, request)) for observe in _call_observers]
        )


def complete_with_retries(
    provider: Provider,
    request: ChatRequest,
    *,
    deadline_seconds: float,
    on_delta: DeltaCallback | None = None,
    should_cancel: CancelCheck | None = None,
    max_attempts: int = 5,
    base_delay: float = 0.5,
    max_delay: float = 20.0,
    min_attempt_seconds: float = 0.25,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Completion:
    """Call `provider` until it answers, retrying 429/5xx/timeouts/cut streams with
    exponential backoff (honouring Retry-After) under one overall deadline.

    A retry is made only if at least `min_attempt_seconds` of the deadline are left
    after its backoff: an attempt with less could only time out, and its timeout would
    hide the error that kept failing.

    Only the returned Completion is ever stored; the deltas of a failed attempt were
    shown live and are superseded by the next attempt's (see DeltaCallback).

    Every call is shown to the registered observers (`provider_call_observer_register`:
    the project's metrics, traces and log context), each failed attempt included.
    """
    with _observed(provider.name, request) as call:
        completion = _attempts(
            provider,
            request,
            call=call,
            deadline_seconds=deadline_seconds,
            on_delta=on_delta,
            should_cancel=should_cancel,
            max_attempts=max_attempts,
            base_delay=base_delay,
            max_delay=max_delay,
            min_attempt_seconds=min_attempt_seconds,
            sleep=sleep,
            clock=clock,
        )
        call.completed(completion)
        return completion


def _attempts(
    provider: Provider,
    request: ChatRequest,
    *,
    call: "CallObservation",
    deadline_seconds: float,
    on_delta: DeltaCallback | None,
    should_cancel: CancelCheck | None,
    max_attempts: int,
    base_delay: float,
    max_delay: float,
    min_attempt_seconds: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> Completion:
    """complete_with_retries' loop, reporting each failed attempt to `call`."""
    on_delta = on_delta or (lambda _chunk, _attempt: None)
    should_cancel = should_cancel or (lambda: False)
    deadline = clock() + deadline_seconds
    attempt = 0
    last_error: ProviderError | None = None
    while True:
        attempt += 1
        remaining = deadline - clock()
        if remaining <= 0:
            # Reached when the backoff sleep overran the deadline it was sized to fit.
            said = f" (last error: {last_error})" if last_error else ""
            raise ProviderError(
                f"{provider.name}: no answer within the {deadline_seconds:g}s deadline "
                f"after {attempt - 1} attempts{said}",
                retryable=False,
                status=last_error.status if last_error else None,
                attempts=attempt - 1,
            ) from last_error
        if should_cancel():
            raise ProviderCancelled("cancelled", attempts=attempt - 1)
        try:
            completion = provider.stream(
                request,
                on_delta=lambda chunk, n=attempt: on_delta(chunk, n),
                should_cancel=should_cancel,
                timeout=min(provider.timeout, remaining),
            )
        except ProviderCancelled as exc:
            exc.attempts = attempt
            call.attempt_failed(exc)
            raise
        except ProviderError as exc:
            exc.attempts = attempt
            call.attempt_failed(exc)
            last_error = exc
            if not exc.retryable:
                raise
            if attempt >= max_attempts:
                # The caller sees a final answer: nothing left for it to retry.
                raise ProviderError(
                    f"{provider.name}: gave up after {attempt} attempts (last error: {exc})",
                    retryable=False,
                    status=exc.status,
                    attempts=attempt,
                ) from exc
            delay = exc.retry_after
            if delay is None:
                delay = min(max_delay, base_delay * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2  # jitter
            delay = max(0.0, delay)  # a Retry-After date already past means "now"
            if clock() + delay + min_attempt_seconds > deadline:
                raise ProviderError(
                    f"{provider.name}: gave up after {attempt} attempts; the next retry "
                    f"would pass the {deadline_seconds:g}s deadline (last error: {exc})",
                    retryable=False,
                    status=exc.status,
                    attempts=attempt,
                ) from exc
            sleep(delay)
            continue
        return Completion(
            content=completion.content,
            usage=completion.usage,
            provider=completion.provider,
            model=completion.model,
            finish_reason=completion.finish_reason,
            attempts=attempt,
        )


def provider_for(name: str, **overrides: Any) -> Provider:
    """The configured adapter called `name` (settings.TOPDOG_PROVIDERS), ready to call."""
    try:
        config = dict(settings.TOPDOG_PROVIDERS[name])
    except KeyError as exc:
        known = ", ".join(sorted(settings.TOPDOG_PROVIDERS))
        raise ProviderError(f"unknown provider {name!r}; configured: {known}") from exc
    cls = import_string(config.pop("class"))
    config.update({k: v for k, v in overrides.items() if v})
    return cls(**config)
