"""The providers tpx knows, by issuer kind.

An issuer's `kind` selects its provider; a kind with no provider is a
configuration error, so the lookup fails loudly rather than guessing.
"""

from __future__ import annotations

from tpx.core.providers.base import Provider
from tpx.core.providers.github import GitHubProvider
from tpx.core.providers.gitlab import GitLabProvider

PROVIDERS: dict[str, Provider] = {
    "github": GitHubProvider(),
    "gitlab": GitLabProvider(),
}


def get_provider(kind: str) -> Provider:
    try:
        return PROVIDERS[kind]
    except KeyError:
        raise KeyError(f"no provider for issuer kind {kind!r}; known kinds: {', '.join(sorted(PROVIDERS))}") from None
