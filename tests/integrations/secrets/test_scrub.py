"""The scrubber: exact forms, and any run of 12+ characters of a secret in any case,
with control characters inserted anywhere (issue 12 D).

Before: only exact, case-sensitive forms were replaced, so `SK-ABC...` (an upstream that
uppercases), the last 14 characters of a token, or a token with `\\r\\n` or NUL inside all
went through unredacted.
"""

import base64
import random
import string
import time
import urllib.parse

import pytest

from integrations.secrets import (
    MIN_RUN_CHARS,
    REDACTED,
    SecretToken,
    secret_scrub,
)

SECRET_ALPHABET = string.ascii_letters + string.digits + "-_"
# Filler shares no character with a secret, so a run never extends into it by chance.
FILLER_ALPHABET = " .,;:!?()[]{}<>@#$%^&*'\"|"
CONTROL = ["\x00", "\r\n", "\n", "\x1b", "\x07", "\x7f", "\u200b", "\ufeff", "\t"]


def random_secret(rng: random.Random, length: int | None = None) -> str:
    return "".join(rng.choices(SECRET_ALPHABET, k=length or rng.randint(20, 64)))


def filler(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(FILLER_ALPHABET, k=length))


def random_case(rng: random.Random, text: str) -> str:
    return "".join(ch.upper() if rng.random() < 0.5 else ch.lower() for ch in text)


def with_controls(rng: random.Random, text: str, count: int) -> str:
    chars = list(text)
    for _ in range(count):
        chars.insert(rng.randint(1, len(chars) - 1), rng.choice(CONTROL))
    return "".join(chars)


def leaks(text: str, secret: str) -> bool:
    """Whether `text`, case-folded and without controls, still holds 12 chars of `secret`."""
    flat = "".join(ch for ch in text if ch.isprintable() and ch not in "\u200b\ufeff").lower()
    low = secret.lower()
    return any(low[i : i + MIN_RUN_CHARS] in flat for i in range(len(low) - MIN_RUN_CHARS + 1))


# --- the exact forms (as before) -------------------------------------------------------


def test_raw_quoted_and_basic_auth_forms_are_replaced():
    token = "ghp_abc/def+ghi=jkl0123"
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    text = f"a {token} b {urllib.parse.quote(token, safe='')} c Basic {basic} d"
    assert secret_scrub(text, [token]) == f"a {REDACTED} b {REDACTED} c Basic {REDACTED} d"


def test_short_and_missing_secrets_are_ignored_and_tokens_unwrapped():
    assert secret_scrub("abc and xyz", ["abc", None]) == "abc and xyz"
    assert secret_scrub("key=secret-value-1", [SecretToken("secret-value-1")]) == f"key={REDACTED}"
    assert secret_scrub(12345, []) == "12345"


def test_text_without_secrets_is_returned_unchanged_controls_and_all():
    text = "line one\r\nline two\x00\ttab \u00e9\u00df\u0130 end"
    assert secret_scrub(text, ["sk-0123456789abcdefghij"]) == text


# --- runs, case, control characters: properties over random secrets -----------------------


@pytest.mark.parametrize("seed", range(40))
def test_any_case_of_a_secret_is_redacted(seed):
    rng = random.Random(seed)
    secret = random_secret(rng)
    prefix, suffix = filler(rng, 30), filler(rng, 30)
    text = prefix + random_case(rng, secret) + suffix
    assert secret_scrub(text, [secret]) == prefix + REDACTED + suffix


@pytest.mark.parametrize("seed", range(40))
def test_any_run_of_twelve_or_more_characters_is_redacted(seed):
    rng = random.Random(seed)
    secret = random_secret(rng)
    length = rng.randint(MIN_RUN_CHARS, len(secret))
    start = rng.randint(0, len(secret) - length)
    run = random_case(rng, secret[start : start + length])
    prefix, suffix = filler(rng, 20), filler(rng, 20)
    assert secret_scrub(prefix + run + suffix, [secret]) == prefix + REDACTED + suffix


@pytest.mark.parametrize("seed", range(40))
def test_control_characters_inside_a_secret_do_not_hide_it(seed):
    rng = random.Random(seed)
    secret = random_secret(rng)
    split = with_controls(rng, random_case(rng, secret), rng.randint(1, 8))
    prefix, suffix = filler(rng, 20), filler(rng, 20)
    out = secret_scrub(prefix + split + suffix, [secret])
    assert out == prefix + REDACTED + suffix
    assert not leaks(out, secret)


@pytest.mark.parametrize("seed", range(20))
def test_several_secrets_mixed_into_noise_leave_no_run_behind(seed):
    rng = random.Random(seed)
    secrets = [random_secret(rng) for _ in range(rng.randint(1, 5))]
    pieces = []
    for _ in range(20):
        pieces.append(filler(rng, rng.randint(0, 40)))
        secret = rng.choice(secrets)
        length = rng.randint(MIN_RUN_CHARS, len(secret))
        start = rng.randint(0, len(secret) - length)
        run = random_case(rng, secret[start : start + length])
        pieces.append(with_controls(rng, run, rng.randint(0, 3)))
    out = secret_scrub("".join(pieces), secrets)
    assert not any(leaks(out, secret) for secret in secrets)
    assert out.count(REDACTED) >= 1


def test_a_hostile_echo_of_the_last_fourteen_characters_is_redacted():
    token = "tok_test_Zq8xY2mN4pR7sT1vW3uK9bC5dF0"
    echo = f"error: bad credentials for token ending {token[-14:]}"
    assert secret_scrub(echo, [token]) == f"error: bad credentials for token ending {REDACTED}"


def test_eleven_characters_are_not_a_run_but_a_short_secret_matches_whole():
    token = "tok_test_Zq8xY2mN4pR7sT1vW3uK9bC5dF0"
    assert secret_scrub(f"tail {token[-11:]}", [token]) == f"tail {token[-11:]}"
    assert secret_scrub("pw: HUNTER2x\x00y!", ["hunter2xy"]) == f"pw: {REDACTED}!"


def test_a_split_with_crlf_keeps_the_text_around_it():
    token = "sk-abcdef0123456789ghijkl"
    text = "first line\r\nkey sk-abc\x00def0123\r\n456789GHIJKL done\r\nlast line"
    assert secret_scrub(text, [token]) == f"first line\r\nkey {REDACTED} done\r\nlast line"


def test_a_megabyte_with_five_secrets_is_scrubbed_in_under_50_ms():
    rng = random.Random(7)
    secrets = [random_secret(rng, 40) for _ in range(5)]
    noise = "".join(rng.choices(string.ascii_letters + string.digits + " .,\n:/-_", k=1_000_000))
    planted = noise[:1000] + secrets[0][-14:].upper() + noise[1000:500_000]
    planted += secrets[1][:5] + "\r\n" + secrets[1][5:] + noise[500_000:]

    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        out = secret_scrub(planted, secrets)
        best = min(best, time.perf_counter() - started)

    assert out.count(REDACTED) == 2
    assert not any(leaks(out, secret) for secret in secrets)
    assert best < 0.050, f"{best * 1000:.1f} ms"


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("accent", ["", "\u00e9"])  # the ASCII fast path, and the other one
def test_offsets_stay_right_with_many_controls_before_and_across_blocks(seed, accent):
    rng = random.Random(seed)
    secret = random_secret(rng, 40)
    prefix = "".join(
        rng.choice([".", "\n", "\r\n", "\x00", " "]) for _ in range(rng.randint(4000, 9000))
    )
    split = with_controls(rng, secret, 3)
    suffix = accent + filler(rng, 50) + "\n"
    assert secret_scrub(prefix + split + suffix, [secret]) == prefix + REDACTED + suffix
