"""Admin input: every field checked, every refusal naming the field and what it accepts."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from tpx.core.errors import Problem
from tpx.core.jose import SUPPORTED_ALGORITHMS
from tpx.core.publishers import API_FIELDS, PERMISSIONS, Publisher

PUBLIC_ISSUERS = {"github": "https://token.actions.githubusercontent.com", "gitlab": "https://gitlab.com"}
_PRINTABLE = r"[\x20-\x7e]"
PACKAGE_RE = re.compile(r"[A-Za-z0-9@][A-Za-z0-9._@/+~-]{0,213}")
GITHUB_OWNER_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
GITHUB_REPO_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
GITHUB_WORKFLOW_RE = re.compile(r"[A-Za-z0-9._ -]{1,200}\.ya?ml")
GITLAB_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}(?:/[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}){0,20}")
GITLAB_PROJECT_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}")
GITLAB_FILEPATH_RE = re.compile(r"[A-Za-z0-9._/ -]{1,1024}\.ya?ml")
ID_RE = re.compile(r"[0-9]{1,20}")
ENVIRONMENT_RE = re.compile(f"{_PRINTABLE}{{1,255}}")
REF_PATTERN_RE = re.compile(f"{_PRINTABLE}{{1,255}}")
GLOB_RE = re.compile(r"[A-Za-z0-9@*?._/+~\[\]!-]{1,214}")
AUDIENCE_RE = re.compile(r"[\x21-\x7e]{1,255}")


def invalid(code: str, field: str, message: str) -> Problem:
    return Problem(code, f"{field}: {message}", extra={"field": field})


def _string(body: dict, field: str, pattern: re.Pattern, accepts: str, code: str, *, required: bool = True) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise invalid(code, field, f"is required; it must be {accepts}")
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise invalid(code, field, f"{_show(value)} is not valid; it must be {accepts}")
    return value


def _string_list(body: dict, field: str, pattern: re.Pattern, accepts: str, code: str, limit: int) -> tuple[str, ...]:
    value = body.get(field)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(code, field, f"must be a list of strings, each {accepts}")
    if len(value) > limit:
        raise invalid(code, field, f"has {len(value)} entries; at most {limit} are allowed")
    for item in value:
        if not pattern.fullmatch(item):
            raise invalid(code, field, f"{_show(item)} is not valid; each entry must be {accepts}")
    return tuple(dict.fromkeys(value))


def _boolean(body: dict, field: str, default: bool, code: str) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise invalid(code, field, "must be true or false")
    return value


def _integer(body: dict, field: str, low: int, high: int, code: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise invalid(code, field, f"must be a whole number of seconds between {low} and {high}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unknown(body: dict, allowed: set[str], code: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(code, unknown[0], f"is not a known field; accepted fields: {', '.join(sorted(allowed))}")


# --- issuers -------------------------------------------------------------------------------------------------

ISSUER_FIELDS = {"url", "kind", "audience", "algorithms", "allowed_packages", "enabled", "max_token_lifetime_seconds"}


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def issuer_url(value: Any, allow_loopback: bool, *, code: str = "invalid_issuer", field: str = "url") -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\x21-\x7e]{1,1024}", value):
        raise invalid(code, field, "must be the issuer URL exactly as the tokens' `iss` claim spells it")
    parts = urlsplit(value)
    if parts.query or parts.fragment or parts.username or parts.password or not parts.hostname:
        raise invalid(code, field, "must be a plain https URL with a host and no query, fragment or credentials")
    if value.endswith("/"):
        raise invalid(code, field, "must not end with '/'; use the exact `iss` value of the tokens")
    loopback = is_loopback_host(parts.hostname)
    if parts.scheme == "https" and not loopback:
        return value
    if loopback and allow_loopback and parts.scheme in ("http", "https"):
        return value
    if loopback:
        raise invalid(code, field, "loopback issuers are refused unless TPX_INSECURE_LOOPBACK_ISSUERS=1 (development only)")
    raise invalid(code, field, "must use https")


def issuer_changes(body: dict, allow_loopback: bool, *, creating: bool) -> dict[str, Any]:
    code = "invalid_issuer"
    _unknown(body, ISSUER_FIELDS if creating else ISSUER_FIELDS - {"url", "kind"}, code)
    out: dict[str, Any] = {}
    if creating:
        out["url"] = issuer_url(body.get("url"), allow_loopback)
        kind = body.get("kind")
        if kind not in ("github", "gitlab"):
            raise invalid(code, "kind", "must be \"github\" or \"gitlab\"")
        out["kind"] = kind
    if "audience" in body:
        out["audience"] = _string(body, "audience", AUDIENCE_RE, "a printable ASCII string of at most 255 characters",
                                  code, required=False)
    if "algorithms" in body:
        algorithms = body["algorithms"]
        if (not isinstance(algorithms, list) or not algorithms
                or not all(isinstance(a, str) and a in SUPPORTED_ALGORITHMS for a in algorithms)):
            raise invalid(code, "algorithms", f"must be a non-empty list drawn from {sorted(SUPPORTED_ALGORITHMS)}")
        out["algorithms"] = list(dict.fromkeys(algorithms))
    if "allowed_packages" in body:
        if body["allowed_packages"] is None:
            out["allowed_packages"] = None
        else:
            out["allowed_packages"] = list(_string_list(body, "allowed_packages", GLOB_RE,
                                                        "a package name or glob such as 'acme-*'", code, 100))
    if "enabled" in body:
        out["enabled"] = _boolean(body, "enabled", True, code)
    if "max_token_lifetime_seconds" in body:
        out["max_token_lifetime_seconds"] = _integer(body, "max_token_lifetime_seconds", 60, 86400, code)
    return out


# --- publishers ----------------------------------------------------------------------------------------------

COMMON_PUBLISHER_FIELDS = {"package", "provider", "issuer", "environments", "ref_patterns", "allow_self_hosted_runners",
                           "token_ttl_seconds", "permissions"}


def publisher_input(body: dict, ttl_max: int, allow_loopback: bool) -> Publisher:
    code = "invalid_publisher"
    provider = body.get("provider")
    if provider not in API_FIELDS:
        raise invalid(code, "provider", "must be \"github\" or \"gitlab\"")
    names = API_FIELDS[provider]
    allowed = COMMON_PUBLISHER_FIELDS | set(names.values()) | ({"require_protected_ref"} if provider == "gitlab" else set())
    _unknown(body, allowed, code)
    package = _string(body, "package", PACKAGE_RE, "a package name (letters, digits, '.', '_', '-', '@', '/')", code)
    issuer = body.get("issuer", PUBLIC_ISSUERS[provider])
    if issuer != PUBLIC_ISSUERS[provider]:
        issuer = issuer_url(issuer, allow_loopback, code=code, field="issuer")
    if provider == "github":
        owner = _string(body, names["owner"], GITHUB_OWNER_RE, "a GitHub user or organisation name", code)
        name = _string(body, names["name"], GITHUB_REPO_RE, "a GitHub repository name", code)
        workflow = _string(body, names["workflow"], GITHUB_WORKFLOW_RE,
                           "the file name of a workflow in .github/workflows, e.g. release.yml (no directory)", code)
    else:
        owner = _string(body, names["owner"], GITLAB_NAMESPACE_RE, "a GitLab group path, e.g. my-group/sub-group", code)
        name = _string(body, names["name"], GITLAB_PROJECT_RE, "a GitLab project path name", code)
        workflow = _string(body, names["workflow"], GITLAB_FILEPATH_RE,
                           "the path of the CI configuration in the project, e.g. .gitlab-ci.yml", code)
    owner_id = _string(body, names["owner_id"], ID_RE, "a numeric id given as a string, e.g. \"65\"", code, required=False)
    name_id = _string(body, names["name_id"], ID_RE, "a numeric id given as a string, e.g. \"74\"", code, required=False)
    environments = _string_list(body, "environments", ENVIRONMENT_RE,
                                "a printable ASCII environment name of at most 255 characters", code, 20)
    ref_patterns = _string_list(body, "ref_patterns", REF_PATTERN_RE,
                                "a git ref or glob such as refs/tags/v*", code, 20)
    permissions = body.get("permissions", ["publish-update"])
    if (not isinstance(permissions, list) or not permissions
            or not all(isinstance(p, str) and p in PERMISSIONS for p in permissions)):
        raise invalid(code, "permissions", f"must be a non-empty list drawn from {list(PERMISSIONS)}")
    return Publisher(
        id="", package=package, provider=provider, issuer=issuer, owner=owner, name=name, workflow=workflow,
        owner_id=owner_id, name_id=name_id, environments=environments, ref_patterns=ref_patterns,
        allow_self_hosted_runners=_boolean(body, "allow_self_hosted_runners", False, code),
        require_protected_ref=_boolean(body, "require_protected_ref", False, code) if provider == "gitlab" else False,
        token_ttl_seconds=_integer(body, "token_ttl_seconds", 60, ttl_max, code),
        permissions=tuple(p for p in PERMISSIONS if p in permissions),
    )
