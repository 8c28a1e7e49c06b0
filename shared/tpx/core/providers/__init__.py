"""The providers tpx knows, by issuer kind.

An issuer's `kind` selects its provider; a kind with no provider is a
configuration error, so the lookup fails loudly rather than guessing.
"""

from __future__ import annotations

from tpx.core.providers.base import Provider
from tpx.core.providers.buildkite import BuildkiteProvider
from tpx.core.providers.circleci import CircleCIProvider
from tpx.core.providers.github import GitHubProvider
from tpx.core.providers.gitlab import GitLabProvider
from tpx.core.providers.google import GoogleProvider

PROVIDERS: dict[str, Provider] = {
    "github": GitHubProvider(),
    "gitlab": GitLabProvider(),
    "google": GoogleProvider(),
    "buildkite": BuildkiteProvider(),
    "circleci": CircleCIProvider(),
}


def get_provider(kind: str) -> Provider:
    try:
        return PROVIDERS[kind]
    except KeyError:
        raise KeyError(f"no provider for issuer kind {kind!r}; known kinds: {', '.join(sorted(PROVIDERS))}") from None
