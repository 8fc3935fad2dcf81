"""A local model behind an OpenAI-compatible server: Ollama, llama.cpp, vLLM, LM Studio.

The OpenAI adapter against `LOCAL_LLM_BASE_URL`. Such servers usually need no key (a
placeholder is sent, since the SDK insists on one) and often report no usage, in which
case the counts are estimated offline. Their calls cost nothing (priced elsewhere).
"""

from urllib.parse import urlsplit

from ai_orchestration.providers.base import ProviderError
from ai_orchestration.providers.openai import OpenAIProvider

PLACEHOLDER_API_KEY = "not-needed"


class LocalProvider(OpenAIProvider):
    name = "local"
    default_base_url = ""
    key_setting = "LOCAL_LLM_API_KEY"
    model_setting = "TOPDOG_LOCAL_MODEL"
    base_url_setting = "LOCAL_LLM_BASE_URL"
    # The long-standing name every OpenAI-compatible server understands.
    max_tokens_param = "max_tokens"

    def __init__(self, *, api_key: str = "", base_url: str = "", timeout: float = 60.0) -> None:
        super().__init__(
            api_key=api_key or PLACEHOLDER_API_KEY,
            base_url=_with_api_path(base_url.strip()),
            timeout=timeout,
        )

    def _require_configuration(self) -> None:
        if not self.base_url:
            raise ProviderError(
                "the local provider has no server: set LOCAL_LLM_BASE_URL to an "
                "OpenAI-compatible endpoint (e.g. http://localhost:11434/v1 for Ollama)",
                retryable=False,
            )


def _with_api_path(base_url: str) -> str:
    """`http://host:11434` means the server's OpenAI API at `/v1`, where all of them
    serve it; a URL with a path is taken as given."""
    if base_url and urlsplit(base_url).path.strip("/") == "":
        return base_url.rstrip("/") + "/v1"
    return base_url
