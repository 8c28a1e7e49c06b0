"""GitLab `ci_config_ref_uri` handling with plain string operations.

GitLab builds the claim as `<host>/<project_path>//<file path>@<ref>`, e.g.
`gitlab.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main`, where `host`
is the instance's host[:port], `ref` the pipeline's full source ref
(`refs/heads/...`, `refs/tags/...`, `refs/merge-requests/...`) and the file path
is the project's CI configuration path, which may itself contain `/`, `//` and `@`.

Splitting rules, chosen so that every boundary is unambiguous for real tokens:
- host+project vs file@ref: the FIRST `//`. Host and project paths never contain
  `//` (no empty segments), so the first one is the separator; any later `//`
  belongs to the file path.
- host vs project: the first `/` (a host[:port] has none).
- file vs ref: the LAST `@` whose suffix starts with `refs/` or is a full commit
  sha (40 hex digits, or 64 for SHA-256 repositories). Git ref names may contain
  `@` (only `@{` is forbidden), so `refs/heads/a@b` must stay whole: a bare `@b`
  suffix is skipped because it is neither. A ref that itself contains
  `@refs/...` is split too far right; that ref then differs from the token's
  `ref_path` and the file part gains an `@`, which no configured
  `workflow_filepath` contains (admin validation refuses `@`), so the
  ambiguity can only fail closed, never match.

No regular expressions: one left-to-right `partition` and one right-to-left
walk over the `@` positions, each character visited a bounded number of times,
so the cost is linear in the input whatever it contains.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

REF_PREFIX = "refs/"
_SHA_LENGTHS = (40, 64)
_HEX = frozenset("0123456789abcdef")


class CiConfigRef(NamedTuple):
    """The four parts of a `ci_config_ref_uri`, as the token spells them."""

    host: str
    project_path: str
    filepath: str
    ref: str


def parse_ci_config_ref_uri(uri: str) -> CiConfigRef | None:
    """Split `uri` into host, project path, file path and ref; None when it has not that shape.

    None for: no `//`, no `/` between host and project, an empty host, project
    or file path, or no `@` followed by a `refs/...` ref or a full sha.
    """
    location, separator, rest = uri.partition("//")
    if not separator:
        return None
    host, slash, project_path = location.partition("/")
    if not host or not slash or not project_path:
        return None
    at = _ref_separator(rest)
    if at is None or at == 0:
        return None
    return CiConfigRef(host, project_path, rest[:at], rest[at + 1 :])


def _ref_separator(rest: str) -> int | None:
    """Index of the last `@` that starts a ref; each `rfind` resumes where the previous one stopped."""
    end = len(rest)
    while True:
        at = rest.rfind("@", 0, end)
        if at < 0:
            return None
        if _is_ref(rest, at + 1):
            return at
        end = at


def _is_ref(text: str, start: int) -> bool:
    """Whether `text[start:]` is a full ref or a commit sha; bounded work per call.

    The hex scan runs only when exactly 40 or 64 characters remain, which is
    true of at most two positions per string.
    """
    if text.startswith(REF_PREFIX, start):
        return True
    remaining = len(text) - start
    return remaining in _SHA_LENGTHS and all(c in _HEX for c in text[start:])


def issuer_host(issuer_url: str) -> str:
    """The host[:port] an issuer's tokens name in `ci_config_ref_uri`.

    GitLab writes its configured host and, for a non-default port, `:port`;
    the issuer URL (`iss`) is the instance URL, so its netloc is that same
    value. Any path (a relative URL root) is not part of the host. Registered
    issuer URLs carry no credentials (admin validation), so the netloc is
    exactly host[:port].
    """
    return urlsplit(issuer_url).netloc
