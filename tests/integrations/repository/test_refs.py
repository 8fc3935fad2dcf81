import pytest

from integrations.repository import (
    InvalidBranchName,
    RepoRef,
    UnsafeRepositoryReference,
    git_branch_name_check,
    git_remote_url_check,
    repository_ref_parse,
)

ALLOWED = {"github.com", "ghe.example.com"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("acme/widgets", RepoRef("github.com", "acme", "widgets")),
        ("Acme-Corp/my.repo_v2-x", RepoRef("github.com", "Acme-Corp", "my.repo_v2-x")),
        ("a/.github", RepoRef("github.com", "a", ".github")),
        ("https://github.com/acme/widgets", RepoRef("github.com", "acme", "widgets")),
        ("https://github.com/acme/widgets.git", RepoRef("github.com", "acme", "widgets")),
        ("https://github.com/acme/widgets/", RepoRef("github.com", "acme", "widgets")),
        ("HTTPS://GitHub.com/acme/widgets", RepoRef("github.com", "acme", "widgets")),
        ("https://ghe.example.com/team/app", RepoRef("ghe.example.com", "team", "app")),
        ("a" * 39 + "/" + "b" * 100, RepoRef("github.com", "a" * 39, "b" * 100)),
    ],
)
def test_accepted_references(value, expected):
    assert repository_ref_parse(value, allowed_hosts=ALLOWED) == expected


BAD_REFERENCES = [
    # other schemes and hosts
    "http://127.0.0.1/x/y",
    "http://github.com/a/b",
    "https://127.0.0.1/x/y",
    "https://169.254.169.254/a/b",
    "https://10.0.0.8/a/b",
    "https://192.168.1.1/a/b",
    "https://[::1]/a/b",
    "https://2130706433/a/b",
    "https://0x7f.1/a/b",
    "https://localhost/a/b",
    "https://api.localhost/a/b",
    "https://evil.com/a/b",
    "https://github.com.evil.com/a/b",
    "https://github.com./a/b",
    "file:///etc/passwd",
    "ssh://git@github.com/a/b",
    "git://github.com/a/b",
    "ftp://github.com/a/b",
    "javascript:alert(1)",
    "git@github.com:a/b",
    "github.com/a/b",
    # credentials and ports
    "https://user:tok@github.com/a/b",
    "https://tok@github.com/a/b",
    "https://github.com:443/a/b",
    "https://github.com:8080/a/b",
    # odd encodings
    "https://github.com/a/b/../../c",
    "https://github.com/a/./b",
    "https://github.com//a/b",
    "https://githu%62.com/a/b",
    "https://github.com/a%2Fb/c",
    "https://xn--github-9za.com/a/b",
    "https://g\u0456thub.com/a/b",  # Cyrillic i
    "acme/w\u0456dgets",  # Cyrillic i
    "https://github.com\\@evil.com/a/b",
    "acme\\widgets",
    " acme/widgets",
    "acme/widgets\n",
    "acme/ widgets",
    "https://github.com/a/b?ref=main",
    "https://github.com/a/b#readme",
    "acme/widgets\x00",
    # owner/name rules
    "",
    "acme",
    "acme/widgets/extra",
    "https://github.com/acme/widgets/tree/main",
    "-acme/widgets",
    "acme/..",
    "acme/.",
    "ac_me/widgets",
    "a" * 40 + "/b",
    "a/" + "b" * 101,
    "acme/wid gets",
    "acme/wid$gets",
    "/acme/widgets",
]


@pytest.mark.parametrize("value", BAD_REFERENCES)
def test_unsafe_references_are_refused(value):
    with pytest.raises(UnsafeRepositoryReference):
        repository_ref_parse(value, allowed_hosts=ALLOWED)


def test_refusal_messages_say_why_and_never_echo_credentials():
    cases = {
        "http://127.0.0.1/x/y": "only https",
        "https://169.254.169.254/a/b": "link-local",
        "https://10.0.0.8/a/b": "private network",
        "https://127.0.0.1/a/b": "loopback",
        "https://user:s3cretTok@github.com/a/b": "credentials",
        "https://github.com/a/b/../../c": "dot segments",
        "https://githu%62.com/a/b": "percent-encoding",
        "https://xn--github-9za.com/a/b": "punycode",
        "git@github.com:a/b": "SSH",
        "https://evil.com/a/b": "not allow-listed",
        "-acme/widgets": "must not start with a hyphen",
    }
    for value, reason in cases.items():
        with pytest.raises(UnsafeRepositoryReference) as caught:
            repository_ref_parse(value, allowed_hosts=ALLOWED)
        assert reason in str(caught.value), value
        assert "s3cretTok" not in str(caught.value)


def test_short_form_uses_the_default_host_which_must_be_allowed():
    ref = repository_ref_parse(
        "a/b", allowed_hosts={"ghe.example.com"}, default_host="ghe.example.com"
    )

    assert ref.host == "ghe.example.com"
    with pytest.raises(UnsafeRepositoryReference):
        repository_ref_parse("a/b", allowed_hosts={"ghe.example.com"})


def test_reporef_renders_without_surprises():
    ref = RepoRef("github.com", "acme", "widgets")

    assert ref.full_name == "acme/widgets"
    assert str(ref) == "acme/widgets"
    assert ref.https_url == "https://github.com/acme/widgets.git"


# --- git remotes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/acme/widgets.git",
        "https://ghe.example.com/team/app",
        "https://git.internal:8443/team/app.git",
    ],
)
def test_accepted_remotes(url):
    allowed = ALLOWED | {"git.internal:8443"}

    assert git_remote_url_check(url, allowed_hosts=allowed) == url


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/repos/app.git",
        "http://github.com/a/b",
        "ssh://git@github.com/a/b",
        "git@github.com:a/b.git",
        "git://github.com/a/b",
        "ext::sh -c touch% /tmp/pwned",
        "https://user:pw@github.com/a/b",
        "https://127.0.0.1/a/b",
        "https://10.1.2.3/a/b",
        "https://169.254.169.254/latest",
        "https://localhost/a/b",
        "https://evil.com/a/b",
        "https://github.com:22/a/b",
        "https://git.internal/team/app",  # only git.internal:8443 is allowed
        "https://github.com/a/../b",
        "https://github.com/a/b%20c",
        "https://github.com/a/b?x=1",
        "https://github.com",
        "/srv/repos/app.git",
        "--upload-pack=touch /tmp/pwned",
    ],
)
def test_refused_remotes(url):
    with pytest.raises(UnsafeRepositoryReference):
        git_remote_url_check(url, allowed_hosts=ALLOWED | {"git.internal:8443"})


def test_local_paths_need_the_explicit_flag(tmp_path):
    url = f"file://{tmp_path}/remote.git"

    with pytest.raises(UnsafeRepositoryReference, match="allow_local_paths"):
        git_remote_url_check(url, allowed_hosts=ALLOWED)
    assert git_remote_url_check(url, allowed_hosts=ALLOWED, allow_local_paths=True) == url
    with pytest.raises(UnsafeRepositoryReference):
        git_remote_url_check("file://host/x.git", allowed_hosts=ALLOWED, allow_local_paths=True)
    with pytest.raises(UnsafeRepositoryReference):
        git_remote_url_check(f"{url}/../x", allowed_hosts=ALLOWED, allow_local_paths=True)


# --- branch names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["main", "topdog/wf-12", "release-1.2", "feature/a_b/c"])
def test_accepted_branch_names(name):
    assert git_branch_name_check(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-x",
        "/x",
        "x/",
        ".x",
        "x.",
        "x.lock",
        "a..b",
        "a//b",
        "a/.b",
        "a@{1}",
        "HEAD",
        "refs/heads/x",
        "a b",
        "a~1",
        "a^",
        "a:b",
        "a\\b",
        "é",
    ],
)
def test_refused_branch_names(name):
    with pytest.raises(InvalidBranchName):
        git_branch_name_check(name)
