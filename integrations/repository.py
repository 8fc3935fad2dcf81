"""Repository references and git remotes, checked before anything touches the network.

A repository reference is `owner/name`, or an https URL on an allow-listed host. Every
other spelling is refused with `UnsafeRepositoryReference`: other schemes, IP literals,
`localhost`, credentials, ports, percent-encoding, non-ASCII or punycode hosts,
backslashes, whitespace, dot segments, queries and fragments. The checks are
allow-list shaped (what is accepted is spelled out; everything else is refused), so a
spelling nobody thought of is refused too.

Messages never echo the rejected value: it may carry a credential.
"""

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass

DEFAULT_HOST = "github.com"

# GitHub's rules: an owner is 1-39 letters, digits or hyphens, not starting with a
# hyphen; a repository name is 1-100 letters, digits, '.', '_' or '-', but not '.'/'..'.
OWNER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}")
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
# One DNS label: letters, digits and inner hyphens.
LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# A branch name: a conservative subset of `git check-ref-format --branch`.
BRANCH_CHARS_RE = re.compile(r"[A-Za-z0-9._/-]{1,200}")
# Characters allowed in a remote's path (no percent-encoding, no query or fragment).
REMOTE_PATH_RE = re.compile(r"(/[A-Za-z0-9._~+-]+)+/?")

HINT = "give owner/name (for example acme/widgets) or https://github.com/owner/name"


class UnsafeRepositoryReference(ValueError):
    """A repository reference or git remote that is malformed or points somewhere unsafe."""


class InvalidBranchName(ValueError):
    """A branch name git would refuse, or one that could be read as an option or path."""


@dataclass(frozen=True)
class RepoRef:
    """A checked repository reference: `owner/name` on `host`."""

    host: str
    owner: str
    name: str

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def https_url(self) -> str:
        return f"https://{self.host}/{self.owner}/{self.name}.git"

    def __str__(self) -> str:
        return self.full_name if self.host == DEFAULT_HOST else f"{self.host}/{self.full_name}"


def _refuse(reason: str) -> UnsafeRepositoryReference:
    return UnsafeRepositoryReference(f"unsafe repository reference: {reason}")


def _check_characters(value: str, *, what: str) -> None:
    """Refuse the encodings that let one string mean two things."""
    if not value:
        raise _refuse(f"the {what} is empty")
    if not value.isascii():
        raise _refuse(
            f"the {what} contains non-ASCII characters (look-alike letters are not accepted)"
        )
    if any(ch.isspace() for ch in value) or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise _refuse(f"the {what} contains whitespace or control characters")
    if "\\" in value:
        raise _refuse(f"the {what} contains a backslash")
    if "%" in value:
        raise _refuse(f"the {what} contains percent-encoding")


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` spells, including the forms resolvers accept (127.1, 0x7f.1,
    2130706433); None for a name."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    labels = bare.split(".")
    if all(re.fullmatch(r"0x[0-9a-f]*|[0-9]+", label) for label in labels if label):
        # Numeric-looking in every label: an IPv4 address in a shorthand spelling.
        return ipaddress.IPv4Address(0)
    return None


def _check_host(host: str, *, allowed_hosts: Collection[str], port: str | None) -> str:
    """`host` (lowercased) if it is a plain, allow-listed DNS name."""
    host = host.lower()
    address = _ip_literal(host)
    if address is not None or host.startswith("["):
        kind = "an IP address"
        if address is not None and address.is_loopback:
            kind = "a loopback address"
        elif address is not None and address.is_link_local:
            kind = "a link-local address (cloud metadata lives there)"
        elif address is not None and address.is_private:
            kind = "a private network address"
        raise _refuse(f"the host is {kind}; use an allow-listed host name")
    if host == "localhost" or host.endswith(".localhost"):
        raise _refuse("the host is localhost; use an allow-listed host name")
    labels = host.split(".")
    if not all(LABEL_RE.fullmatch(label) for label in labels):
        raise _refuse("the host is not a plain DNS name")
    if any(label.startswith("xn--") for label in labels):
        raise _refuse("the host is an internationalised (punycode) name")
    allowed = {h.lower() for h in allowed_hosts}
    candidate = f"{host}:{port}" if port is not None else host
    if candidate not in allowed:
        if port is not None and host in allowed:
            raise _refuse("the URL names a port; drop it")
        raise _refuse(
            f"the host {host} is not allow-listed (allowed: {', '.join(sorted(allowed))})"
        )
    return host


def _split_authority(authority: str) -> tuple[str, str | None]:
    """(host, port) of an authority already known to carry no credentials."""
    if authority.startswith("["):
        raise _refuse("the host is an IP address; use an allow-listed host name")
    if ":" in authority:
        host, port = authority.split(":", 1)
        return host, port
    return authority, None


def repository_full_name_parse(value: str) -> tuple[str, str]:
    """(owner, name) of an `owner/name` string, checked against GitHub's rules."""
    if not isinstance(value, str):
        raise _refuse("expected a string")
    _check_characters(value, what="reference")
    parts = value.split("/")
    if len(parts) != 2:
        raise _refuse(f"expected exactly owner/name; {HINT}")
    owner, name = parts
    if not OWNER_RE.fullmatch(owner):
        raise _refuse(
            "the owner must be 1-39 letters, digits or hyphens and must not start with a hyphen"
        )
    if name in {".", ".."} or not NAME_RE.fullmatch(name):
        raise _refuse(
            "the repository name must be 1-100 letters, digits, '.', '_' or '-' "
            "(and not '.' or '..')"
        )
    return owner, name


def repository_ref_parse(
    value: str, *, allowed_hosts: Collection[str], default_host: str = DEFAULT_HOST
) -> RepoRef:
    """A RepoRef from `owner/name` (on `default_host`) or `https://<allowed host>/owner/name`."""
    if not isinstance(value, str):
        raise _refuse("expected a string")
    _check_characters(value, what="reference")
    if "?" in value or "#" in value:
        raise _refuse("a query or fragment is not accepted")
    if "://" not in value:
        if "@" in value or ":" in value:
            raise _refuse(f"SSH-style and scheme-less remotes are not accepted; {HINT}")
        owner, name = repository_full_name_parse(value)
        host = _check_host(default_host, allowed_hosts=allowed_hosts, port=None)
        return RepoRef(host=host, owner=owner, name=name)
    scheme, rest = value.split("://", 1)
    if scheme.lower() != "https":
        raise _refuse(f"only https URLs are accepted, not {scheme.lower()[:10]}:; {HINT}")
    authority, _, path = rest.partition("/")
    if "@" in authority:
        raise _refuse("credentials in the URL are not accepted; the token is configured separately")
    host, port = _split_authority(authority)
    host = _check_host(host, allowed_hosts=allowed_hosts, port=port)
    if port is not None:
        raise _refuse("the URL names a port; drop it")
    if path.endswith("/"):
        path = path[:-1]
    segments = path.split("/")
    if any(segment in {"", ".", ".."} for segment in segments):
        raise _refuse("the URL path has empty or dot segments")
    if len(segments) != 2:
        raise _refuse(f"the URL path must be /owner/name; {HINT}")
    owner, name = segments
    if name.endswith(".git"):
        name = name[: -len(".git")]
    owner, name = repository_full_name_parse(f"{owner}/{name}")
    return RepoRef(host=host, owner=owner, name=name)


def git_remote_url_check(
    url: str, *, allowed_hosts: Collection[str], allow_local_paths: bool = False
) -> str:
    """`url` if it is a safe git remote: https on an allow-listed host (a port only when
    `host:port` itself is allow-listed), no credentials, no IP literals; `file:///abs/path`
    only with `allow_local_paths=True` (tests and local setups use bare repositories)."""
    if not isinstance(url, str):
        raise _refuse("expected a string")
    _check_characters(url, what="remote URL")
    if "?" in url or "#" in url:
        raise _refuse("a query or fragment is not accepted in a remote URL")
    if "://" not in url:
        raise _refuse("the remote must be an https:// URL (SSH and scp-style remotes are refused)")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        if not allow_local_paths:
            raise _refuse("file: remotes are only accepted for local setups (allow_local_paths)")
        if not rest.startswith("/"):
            raise _refuse("a file: remote must be file:///absolute/path")
        if any(segment in {".", ".."} for segment in rest.split("/")):
            raise _refuse("the remote path has dot segments")
        return f"file://{rest}"
    if scheme != "https":
        raise _refuse(f"only https remotes are accepted, not {scheme[:10]}:")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        raise _refuse("credentials in the remote URL are not accepted; pass the token separately")
    host, port = _split_authority(authority)
    if port is not None and not port.isdigit():
        raise _refuse("the remote URL has a malformed port")
    host = _check_host(host, allowed_hosts=allowed_hosts, port=port)
    path = slash + path
    if any(segment in {".", ".."} for segment in path.split("/")):
        raise _refuse("the remote path has dot segments")
    if not REMOTE_PATH_RE.fullmatch(path):
        raise _refuse("the remote path must be /owner/name(.git) in plain characters")
    authority = f"{host}:{port}" if port is not None else host
    return f"https://{authority}{path}"


def git_branch_name_check(name: str) -> str:
    """`name` if it is a plain branch name (a conservative subset of git's rules)."""
    if not isinstance(name, str) or not BRANCH_CHARS_RE.fullmatch(name):
        raise InvalidBranchName(
            "a branch name must be 1-200 letters, digits, '.', '_', '-' or '/' characters"
        )
    if (
        name.startswith(("-", "/", "."))
        or name.endswith(("/", ".", ".lock"))
        or any(part in name for part in ("..", "//", "/.", "@{"))
        or name == "HEAD"
        or name.startswith("refs/")
    ):
        raise InvalidBranchName(
            f"branch name {name!r} is not valid: no leading '-', '/' or '.', no trailing '/', "
            "'.' or '.lock', no '..' or '//', and no 'refs/' prefix"
        )
    return name
