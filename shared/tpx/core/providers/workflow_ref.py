"""GitHub `workflow_ref` handling with plain string operations.

A `workflow_ref` is `{repository}/.github/workflows/{file}@{ref}`, but both the
file name and the ref may themselves contain `@` (`nested@evil.yml`,
`refs/heads/misleading@branch.yml`), so splitting at an `@` cannot be trusted.
Authorization therefore never parses: it rebuilds the expected string from the
token's own `repository` and `ref` and compares for equality. Extraction only
names the file for messages. No regular expressions: every function is a few
prefix/suffix comparisons, linear in the input, with nothing to backtrack.
"""

from __future__ import annotations

WORKFLOWS_DIR = "/.github/workflows/"


def expected_workflow_ref(repository: str, filename: str, ref: str) -> str:
    """The only `workflow_ref` a publisher for `filename` accepts at `ref`."""
    return f"{repository}{WORKFLOWS_DIR}{filename}@{ref}"


def workflow_filename(workflow_ref: str, repository: str, ref: str) -> str | None:
    """The workflow file `workflow_ref` names, anchored at both ends by known values.

    Anchoring on the token's `repository` and `ref` (rather than searching for
    `@`) is what makes `@` inside the file name or the ref unambiguous. None when
    the ref is not a top-level workflow of `repository` at `ref`: another
    repository's workflow, a subdirectory, a missing `@ref` suffix or an empty
    file name.
    """
    prefix = f"{repository}{WORKFLOWS_DIR}"
    suffix = f"@{ref}"
    # The length test keeps prefix and suffix from overlapping, so the slice
    # below is exactly what lies between them.
    if len(workflow_ref) <= len(prefix) + len(suffix):
        return None
    if not workflow_ref.startswith(prefix) or not workflow_ref.endswith(suffix):
        return None
    filename = workflow_ref[len(prefix) : len(workflow_ref) - len(suffix)]
    if "/" in filename:
        return None
    return filename
