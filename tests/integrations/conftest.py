import json

import pytest

from integrations.github import CallPolicy
from tests.integrations.fake_github import FakeGitHub

# Distinctive, so a leak anywhere is easy to spot.
TOKEN = "ghp_test_TopDogToken_7f3a9c1e5b"

SEED_FILES = {
    "README.md": "# Shop\n\nA small web shop.\n",
    "manage.py": "import django\n",
    "requirements.txt": "Django>=5.2\nrequests==2.32\n",
    "shop/__init__.py": "",
    "shop/views.py": "def index(request):\n    return 'hi'\n",
    "web/package.json": json.dumps({"dependencies": {"react": "^18", "next": "^14"}}),
    "docs/old.md": "obsolete\n",
}


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_github():
    with FakeGitHub(token=TOKEN) as fake:
        fake.repo_create(
            "acme/shop", files=SEED_FILES, languages={"Python": 9000, "TypeScript": 1200}
        )
        yield fake


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def policy(clock):
    return CallPolicy(sleep=clock.sleep, clock=clock, jitter=False)


@pytest.fixture
def gh(fake_github, policy):
    """The keyword arguments every client call takes, pointed at the fake."""
    return {"token": TOKEN, "repo": "acme/shop", "base_url": fake_github.base_url, "policy": policy}
