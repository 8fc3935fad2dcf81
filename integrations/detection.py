"""What a repository is written in: languages from file names, frameworks from manifests.

Pure functions over paths and file texts, so the GitHub client and a local checkout
can share them. Detection is a hint for prompts, never a gate: unknown stays unknown.
"""

import json
import posixpath
import re
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping

EXTENSION_LANGUAGES = {
    ".py": "Python",
    ".pyi": "Python",
    ".js": "JavaScript",
    ".mjs": "JavaScript",
    ".cjs": "JavaScript",
    ".jsx": "JavaScript",
    ".ts": "TypeScript",
    ".tsx": "TypeScript",
    ".rb": "Ruby",
    ".go": "Go",
    ".rs": "Rust",
    ".java": "Java",
    ".kt": "Kotlin",
    ".kts": "Kotlin",
    ".scala": "Scala",
    ".cs": "C#",
    ".php": "PHP",
    ".swift": "Swift",
    ".c": "C",
    ".h": "C",
    ".cc": "C++",
    ".cpp": "C++",
    ".hpp": "C++",
    ".ex": "Elixir",
    ".exs": "Elixir",
    ".dart": "Dart",
    ".vue": "Vue",
    ".svelte": "Svelte",
    ".html": "HTML",
    ".css": "CSS",
    ".scss": "SCSS",
    ".sh": "Shell",
    ".sql": "SQL",
}
# Markup and styling count only when nothing else is there.
SECONDARY_LANGUAGES = {"HTML", "CSS", "SCSS", "Shell", "SQL"}

# Manifest file name -> the dependency names in it that mean a framework.
PYTHON_FRAMEWORKS = {
    "django": "django",
    "djangorestframework": "django-rest-framework",
    "flask": "flask",
    "fastapi": "fastapi",
    "starlette": "starlette",
    "tornado": "tornado",
    "pyramid": "pyramid",
}
NODE_FRAMEWORKS = {
    "react": "react",
    "next": "next",
    "vue": "vue",
    "nuxt": "nuxt",
    "svelte": "svelte",
    "@sveltejs/kit": "sveltekit",
    "@angular/core": "angular",
    "express": "express",
    "@nestjs/core": "nestjs",
    "koa": "koa",
    "fastify": "fastify",
}
RUBY_FRAMEWORKS = {"rails": "rails", "sinatra": "sinatra", "hanami": "hanami"}
PHP_FRAMEWORKS = {"laravel/framework": "laravel", "symfony/framework-bundle": "symfony"}
RUST_FRAMEWORKS = {"actix-web": "actix-web", "axum": "axum", "rocket": "rocket"}
GO_FRAMEWORKS = {
    "github.com/gin-gonic/gin": "gin",
    "github.com/labstack/echo": "echo",
    "github.com/gofiber/fiber": "fiber",
}
JVM_MARKERS = {
    "spring-boot": "spring",
    "org.springframework": "spring",
    "io.micronaut": "micronaut",
}

MANIFEST_NAMES = frozenset(
    {
        "package.json",
        "requirements.txt",
        "requirements-dev.txt",
        "pyproject.toml",
        "Pipfile",
        "setup.py",
        "setup.cfg",
        "Gemfile",
        "composer.json",
        "Cargo.toml",
        "go.mod",
        "pom.xml",
        "build.gradle",
        "build.gradle.kts",
    }
)
# Marker files that mean a framework by their presence alone.
MARKER_FILES = {
    "manage.py": "django",
    "next.config.js": "next",
    "next.config.mjs": "next",
    "next.config.ts": "next",
    "nuxt.config.ts": "nuxt",
    "angular.json": "angular",
    "config/routes.rb": "rails",
    "artisan": "laravel",
}
SKIPPED_DIRS = frozenset(
    {"node_modules", "vendor", ".venv", "venv", "dist", "build", "third_party"}
)
MAX_MANIFEST_DEPTH = 2

REQUIREMENT_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", re.MULTILINE)


def languages_from_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """Languages by number of files with their extensions, most first."""
    counts: Counter[str] = Counter()
    for path in paths:
        if any(part in SKIPPED_DIRS for part in path.split("/")[:-1]):
            continue
        language = EXTENSION_LANGUAGES.get(posixpath.splitext(path)[1].lower())
        if language:
            counts[language] += 1
    ranked = [language for language, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    primary = [language for language in ranked if language not in SECONDARY_LANGUAGES]
    return tuple(primary + [language for language in ranked if language in SECONDARY_LANGUAGES])


def languages_from_byte_counts(counts: Mapping[str, int]) -> tuple[str, ...]:
    """GitHub's languages endpoint ({language: bytes}) as names, most bytes first.
    (PyGithub adds a "url" key to GET answers; only numeric counts are languages.)"""
    numeric = {k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)}
    return tuple(name for name, _ in sorted(numeric.items(), key=lambda kv: (-kv[1], kv[0])))


def manifest_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """The manifests worth reading: known names at most two directories deep, outside
    vendored trees, shallowest first."""
    found = []
    for path in paths:
        parts = path.split("/")
        if parts[-1] not in MANIFEST_NAMES or len(parts) > MAX_MANIFEST_DEPTH + 1:
            continue
        if any(part in SKIPPED_DIRS for part in parts[:-1]):
            continue
        found.append(path)
    return tuple(sorted(found, key=lambda p: (p.count("/"), p)))


def _python_names(name: str, text: str) -> set[str]:
    if name == "pyproject.toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return set(REQUIREMENT_NAME_RE.findall(text))
        project = data.get("project", {})
        specs = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            specs.extend(extra)
        names = {m.group(1) for spec in specs if (m := REQUIREMENT_NAME_RE.match(str(spec)))}
        poetry = data.get("tool", {}).get("poetry", {})
        names.update(poetry.get("dependencies", {}))
        for group in poetry.get("group", {}).values():
            names.update(group.get("dependencies", {}))
        return names
    if name == "Pipfile":
        return set(re.findall(r"^\s*\"?([A-Za-z0-9._-]+)\"?\s*=", text, re.MULTILINE))
    if name in {"setup.py", "setup.cfg"}:
        return set(re.findall(r"[\"']?([A-Za-z0-9._-]+)\s*(?:[<>=!~]|[\"',\n])", text))
    return set(REQUIREMENT_NAME_RE.findall(text))


def _from_package_json(text: str) -> set[str]:
    try:
        data = json.loads(text)
    except ValueError:
        return set()
    if not isinstance(data, dict):
        return set()
    names: set[str] = set()
    for key in ("dependencies", "devDependencies", "peerDependencies"):
        section = data.get(key)
        if isinstance(section, dict):
            names.update(section)
    return {NODE_FRAMEWORKS[name] for name in names if name in NODE_FRAMEWORKS}


def _from_toml_dependencies(text: str, table: Mapping[str, str]) -> set[str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return set()
    names = set(data.get("dependencies", {}))
    return {table[name] for name in names if name in table}


def frameworks_detect(manifests: Mapping[str, str], paths: Iterable[str] = ()) -> tuple[str, ...]:
    """Frameworks named by manifests ({path: text}) or by marker files in `paths`, sorted."""
    found: set[str] = set()
    for path, text in manifests.items():
        name = posixpath.basename(path)
        if name == "package.json":
            found |= _from_package_json(text)
        elif name.startswith("requirements") or name in {
            "pyproject.toml",
            "Pipfile",
            "setup.py",
            "setup.cfg",
        }:
            names = {n.lower().replace("_", "-") for n in _python_names(name, text)}
            found |= {PYTHON_FRAMEWORKS[n] for n in names if n in PYTHON_FRAMEWORKS}
        elif name == "Gemfile":
            gems = set(re.findall(r"^\s*gem\s+[\"']([A-Za-z0-9_-]+)[\"']", text, re.MULTILINE))
            found |= {RUBY_FRAMEWORKS[g] for g in gems if g in RUBY_FRAMEWORKS}
        elif name == "composer.json":
            try:
                data = json.loads(text)
            except ValueError:
                data = {}
            require = data.get("require", {}) if isinstance(data, dict) else {}
            found |= {PHP_FRAMEWORKS[p] for p in require if p in PHP_FRAMEWORKS}
        elif name == "Cargo.toml":
            found |= _from_toml_dependencies(text, RUST_FRAMEWORKS)
        elif name == "go.mod":
            found |= {fw for module, fw in GO_FRAMEWORKS.items() if module in text}
        elif name in {"pom.xml", "build.gradle", "build.gradle.kts"}:
            found |= {fw for marker, fw in JVM_MARKERS.items() if marker in text}
    for path in paths:
        framework = MARKER_FILES.get(path)
        if framework:
            found.add(framework)
    return tuple(sorted(found))
