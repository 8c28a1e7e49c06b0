"""Table tests for GitLab `ci_config_ref_uri` splitting: the boundaries, the `@` and `//`
ambiguities, refusal of other shapes, and linear time on pathological input."""

from __future__ import annotations

import time

import pytest

from tpx.core.providers.gitlab_ref import CiConfigRef, issuer_host, parse_ci_config_ref_uri

SHA = "714a629c0b401fdce83e847fc9589983fc6f46bc"
SHA256 = "a" * 64


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        pytest.param("gitlab.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main",
                     ("gitlab.com", "my-group/my-project", ".gitlab-ci.yml", "refs/heads/main"), id="fixture"),
        pytest.param("gitlab.com/a/b/c/project//.gitlab-ci.yml@refs/tags/v1.0",
                     ("gitlab.com", "a/b/c/project", ".gitlab-ci.yml", "refs/tags/v1.0"), id="nested-groups"),
        pytest.param("gitlab.example.com:8443/g/p//ci/release.yml@refs/heads/main",
                     ("gitlab.example.com:8443", "g/p", "ci/release.yml", "refs/heads/main"), id="host-with-port"),
        pytest.param("127.0.0.1:5000/g/p//.gitlab-ci.yml@refs/heads/main",
                     ("127.0.0.1:5000", "g/p", ".gitlab-ci.yml", "refs/heads/main"), id="loopback-host"),
        pytest.param(f"gitlab.com/g/p//.gitlab-ci.yml@{SHA}", ("gitlab.com", "g/p", ".gitlab-ci.yml", SHA),
                     id="sha-ref"),
        pytest.param(f"gitlab.com/g/p//.gitlab-ci.yml@{SHA256}", ("gitlab.com", "g/p", ".gitlab-ci.yml", SHA256),
                     id="sha256-ref"),
        # Everything after the first '//' belongs to file@ref.
        pytest.param("gitlab.com/g/p//ci//.gitlab-ci.yml@refs/heads/main",
                     ("gitlab.com", "g/p", "ci//.gitlab-ci.yml", "refs/heads/main"), id="double-slash-in-file"),
        pytest.param("gitlab.com/g/p///.gitlab-ci.yml@refs/heads/main",
                     ("gitlab.com", "g/p", "/.gitlab-ci.yml", "refs/heads/main"), id="file-starting-with-slash"),
        # '@' in the ref that is not followed by refs/ or a sha stays in the ref.
        pytest.param("gitlab.com/g/p//.gitlab-ci.yml@refs/heads/feature@home",
                     ("gitlab.com", "g/p", ".gitlab-ci.yml", "refs/heads/feature@home"), id="at-in-ref"),
        pytest.param("gitlab.com/g/p//ci@v2/.gitlab-ci.yml@refs/heads/main",
                     ("gitlab.com", "g/p", "ci@v2/.gitlab-ci.yml", "refs/heads/main"), id="at-in-file"),
        pytest.param("gitlab.com/g/p//a@refs/x.yml@refs/heads/main",
                     ("gitlab.com", "g/p", "a@refs/x.yml", "refs/heads/main"), id="at-refs-in-file"),
        # Documented ambiguity: a ref containing '@refs/' is split at its last one (fails closed later).
        pytest.param("gitlab.com/g/p//.gitlab-ci.yml@refs/heads/a@refs/heads/main",
                     ("gitlab.com", "g/p", ".gitlab-ci.yml@refs/heads/a", "refs/heads/main"), id="at-refs-in-ref"),
        pytest.param("gitlab.com/g/p//x.yml@" + "b" * 40 + "c",
                     None, id="41-hex-is-no-sha"),
    ],
)
def test_parse(uri: str, parts: tuple[str, str, str, str] | None) -> None:
    assert parse_ci_config_ref_uri(uri) == (CiConfigRef(*parts) if parts else None)


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("", id="empty"),
        pytest.param("gitlab.com/g/p/.gitlab-ci.yml@refs/heads/main", id="no-double-slash"),
        pytest.param("gitlab.com//.gitlab-ci.yml@refs/heads/main", id="no-project"),
        pytest.param("/g/p//.gitlab-ci.yml@refs/heads/main", id="no-host"),
        pytest.param("https://gitlab.com/g/p//.gitlab-ci.yml@refs/heads/main", id="scheme"),
        pytest.param("gitlab.com/g/p//.gitlab-ci.yml", id="no-ref"),
        pytest.param("gitlab.com/g/p//.gitlab-ci.yml@main", id="short-ref"),
        pytest.param("gitlab.com/g/p//.gitlab-ci.yml@714A629C0B401FDCE83E847FC9589983FC6F46BC", id="upper-hex-sha"),
        pytest.param("gitlab.com/g/p//.gitlab-ci.yml@abc123", id="short-sha"),
        pytest.param("gitlab.com/g/p//@refs/heads/main", id="empty-file"),
        pytest.param("gitlab.com/g/p//", id="nothing-after-separator"),
    ],
)
def test_parse_refuses(uri: str) -> None:
    assert parse_ci_config_ref_uri(uri) is None


def test_result_is_a_plain_tuple() -> None:
    host, project, filepath, ref = parse_ci_config_ref_uri("h/g/p//f.yml@refs/heads/x")  # type: ignore[misc]
    assert (host, project, filepath, ref) == ("h", "g/p", "f.yml", "refs/heads/x")


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("h/g/p//" + "@" * 1024, id="all-at"),
        pytest.param("h/g/p//" + "@/" * 512, id="at-slash"),
        pytest.param("h/g/p//" + "@r" * 512, id="at-almost-ref"),
        pytest.param("h/g/p//" + "@refs" * 205, id="at-refs-without-slash"),
        pytest.param("/" * 1024, id="all-slash"),
        pytest.param("h/" + "/@" * 511, id="slash-at"),
        pytest.param("h/g/p//" + ("a" * 39 + "@") * 25, id="near-sha-lengths"),
    ],
)
def test_linear_time_on_pathological_input(uri: str) -> None:
    # 1000 parses of a ~1 KiB adversarial string: a quadratic split would take
    # seconds here, a linear one milliseconds.
    started = time.perf_counter()
    for _ in range(1000):
        parse_ci_config_ref_uri(uri)
    assert time.perf_counter() - started < 2.0


def test_linear_time_scales() -> None:
    """Sixteen times the input costs roughly sixteen times the time, not 256 times."""
    def cost(n: int) -> float:
        uri = "h/g/p//" + "@x" * n
        started = time.perf_counter()
        for _ in range(50):
            parse_ci_config_ref_uri(uri)
        return time.perf_counter() - started

    cost(512)  # warm up
    small, large = min(cost(4096) for _ in range(3)), min(cost(65536) for _ in range(3))
    assert large < small * 64


@pytest.mark.parametrize(
    ("url", "host"),
    [
        pytest.param("https://gitlab.com", "gitlab.com", id="public"),
        pytest.param("https://gitlab.example.com", "gitlab.example.com", id="self-managed"),
        pytest.param("http://127.0.0.1:41234", "127.0.0.1:41234", id="loopback-with-port"),
        pytest.param("https://example.com/gitlab", "example.com", id="relative-url-root"),
    ],
)
def test_issuer_host(url: str, host: str) -> None:
    assert issuer_host(url) == host
