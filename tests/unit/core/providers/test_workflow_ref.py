"""Table tests for GitHub workflow_ref extraction: the file name and the ref may
both contain '@', so only anchoring on the token's repository and ref is safe."""

from __future__ import annotations

import pytest

from tpx.core.providers.workflow_ref import expected_workflow_ref, workflow_filename

REPO = "octo-org/octo-repo"
MAIN = "refs/heads/main"


@pytest.mark.parametrize(
    ("workflow_ref", "repository", "ref", "filename"),
    [
        pytest.param(f"{REPO}/.github/workflows/release.yml@{MAIN}", REPO, MAIN, "release.yml", id="plain"),
        pytest.param(f"{REPO}/.github/workflows/release.yaml@refs/tags/v1.0.0", REPO, "refs/tags/v1.0.0",
                     "release.yaml", id="tag-ref"),
        pytest.param(f"{REPO}/.github/workflows/nested@evil.yml@{MAIN}", REPO, MAIN, "nested@evil.yml",
                     id="at-in-filename"),
        pytest.param(f"{REPO}/.github/workflows/basic.yml@refs/heads/misleading@branch.yml", REPO,
                     "refs/heads/misleading@branch.yml", "basic.yml", id="at-in-ref"),
        pytest.param(f"{REPO}/.github/workflows/foo.yml.yml@{MAIN}", REPO, MAIN, "foo.yml.yml", id="double-extension"),
        pytest.param(f"{REPO}/.github/workflows/@@@{MAIN}", REPO, MAIN, "@@", id="only-ats"),
        pytest.param(f"{REPO}/.github/workflows/release.yml@refs/pull/1/merge", REPO, "refs/pull/1/merge",
                     "release.yml", id="pull-ref"),
        pytest.param(f"{REPO}/.github/workflows/release.yml@", REPO, "", "release.yml", id="empty-ref"),
        # None: not a top-level workflow of this repository at this ref.
        pytest.param(f"{REPO}/.github/workflows/release.yml", REPO, MAIN, None, id="no-at"),
        pytest.param(f"{REPO}/.github/workflows/release.yml@refs/heads/dev", REPO, MAIN, None, id="other-ref"),
        pytest.param(f"{REPO}/.github/workflows/release.yml@{MAIN}x", REPO, MAIN, None, id="ref-with-suffix"),
        pytest.param(f"{REPO}/.github/workflows/release.yml@{MAIN}", REPO, "heads/main", None, id="ref-suffix-only"),
        pytest.param(f"other-org/other-repo/.github/workflows/release.yml@{MAIN}", REPO, MAIN, None,
                     id="other-repository"),
        pytest.param(f"octo-org/octo-repo-evil/.github/workflows/release.yml@{MAIN}", REPO, MAIN, None,
                     id="repository-prefix"),
        pytest.param(f"evil/{REPO}/.github/workflows/release.yml@{MAIN}", REPO, MAIN, None,
                     id="repository-not-at-start"),
        pytest.param(f"Octo-Org/Octo-Repo/.github/workflows/release.yml@{MAIN}", REPO, MAIN, None,
                     id="repository-case-differs"),
        pytest.param(f"{REPO}/.github/workflows/sub/release.yml@{MAIN}", REPO, MAIN, None, id="subdirectory"),
        pytest.param(f"{REPO}/.github/workflows/../release.yml@{MAIN}", REPO, MAIN, None, id="dot-dot"),
        pytest.param(f"{REPO}/.github/workflows/@{MAIN}", REPO, MAIN, None, id="empty-filename"),
        pytest.param(f"{REPO}/.github/workflows@{MAIN}", REPO, MAIN, None, id="no-directory-slash"),
        pytest.param(f"{REPO}/.github/release.yml@{MAIN}", REPO, MAIN, None, id="wrong-directory"),
        pytest.param(f"{REPO}/.GitHub/workflows/release.yml@{MAIN}", REPO, MAIN, None, id="directory-case"),
        pytest.param(f"{REPO}/.github/workflows/@{MAIN}"[:-1], REPO, MAIN, None, id="too-short"),
        pytest.param("", REPO, MAIN, None, id="empty"),
        # Prefix and suffix overlapping must not yield a (negative) slice.
        pytest.param("a@b/.github/workflows/", "a@b", "b/.github/workflows/", None, id="prefix-suffix-overlap"),
    ],
)
def test_workflow_filename(workflow_ref: str, repository: str, ref: str, filename: str | None) -> None:
    assert workflow_filename(workflow_ref, repository, ref) == filename


@pytest.mark.parametrize(
    ("repository", "filename", "ref", "expected"),
    [
        pytest.param(REPO, "release.yml", MAIN, f"{REPO}/.github/workflows/release.yml@{MAIN}", id="plain"),
        pytest.param(REPO, "nested@evil.yml", MAIN, f"{REPO}/.github/workflows/nested@evil.yml@{MAIN}", id="at"),
        pytest.param(REPO, "basic.yml", "refs/heads/misleading@branch.yml",
                     f"{REPO}/.github/workflows/basic.yml@refs/heads/misleading@branch.yml", id="at-in-ref"),
    ],
)
def test_expected_workflow_ref(repository: str, filename: str, ref: str, expected: str) -> None:
    assert expected_workflow_ref(repository, filename, ref) == expected


@pytest.mark.parametrize(
    ("repository", "filename", "ref"),
    [
        pytest.param(REPO, "release.yml", MAIN, id="plain"),
        pytest.param(REPO, "nested@evil.yml", MAIN, id="at-in-filename"),
        pytest.param(REPO, "basic.yml", "refs/heads/misleading@branch.yml", id="at-in-ref"),
        pytest.param(REPO, "a@b@c.yml", "refs/heads/x@y@z", id="ats-everywhere"),
    ],
)
def test_extraction_inverts_construction(repository: str, filename: str, ref: str) -> None:
    assert workflow_filename(expected_workflow_ref(repository, filename, ref), repository, ref) == filename


def test_large_adversarial_inputs_are_handled() -> None:
    """Pathological '@' and '/' runs only cost prefix/suffix comparisons (no timing asserted)."""
    ats = "@" * 200_000
    slashes = "/.github/workflows/" * 10_000
    assert workflow_filename(f"{REPO}/.github/workflows/{ats}@{MAIN}", REPO, MAIN) == ats
    assert workflow_filename(f"{REPO}{slashes}x@{MAIN}", REPO, MAIN) is None
