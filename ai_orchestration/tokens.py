"""Offline token estimates. Provider-reported usage replaces these when a call returns."""

import math


def tokens_estimate(text: str) -> int:
    """Tokens `text` is likely to take: about 4 characters, or 0.75 words, per token."""
    if not text:
        return 0
    by_chars = len(text) / 4
    by_words = len(text.split()) / 0.75
    return max(1, math.ceil(max(by_chars, by_words)))


MESSAGE_OVERHEAD_TOKENS = 4
