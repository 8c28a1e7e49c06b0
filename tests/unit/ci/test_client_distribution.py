"""The CI client ships on its own, safe to install: no server dependencies, no package index, pinned by hash."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CLIENT = ROOT / "clients" / "ci"
SERVER_PACKAGES = {"asyncpg", "aio-pika", "aiormq", "uvicorn", "starlette", "structlog", "prometheus-client",
                   "cryptography", "pyjwt", "orjson", "tpx"}
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


def test_the_distribution_depends_on_httpx_alone():
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "tpx-ci"
    assert project["dependencies"] == ["httpx>=0.27"]
    assert set(project["scripts"]) == {"tpx-ci", "tpx-cargo-credential"}


def locked() -> dict[str, tuple[str, list[str]]]:
    text = (CLIENT / "requirements.lock").read_text()
    assert "--index-url" not in text and "--extra-index-url" not in text and "--find-links" not in text
    entries = {}
    for block in re.split(r"\n(?=[a-z])", text):
        match = re.match(r"([a-z0-9._-]+)==([^ \\\n]+)", block.strip())
        if match:
            entries[match[1]] = (match[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


def test_every_locked_dependency_is_pinned_with_a_hash_and_none_is_the_server():
    entries = locked()
    assert "httpx" in entries
    for name, (version, hashes) in entries.items():
        assert hashes, f"{name}=={version} has no hash: pip --require-hashes would refuse the whole file"
    assert not SERVER_PACKAGES & set(entries)


def actions() -> list[Path]:
    return sorted((CLIENT / "github").rglob("action.yml"))


@pytest.mark.parametrize("path", actions(), ids=lambda p: str(p.relative_to(CLIENT)))
def test_the_github_actions_run_the_reviewed_commit_with_hashed_dependencies(path):
    action = yaml.safe_load(path.read_text())
    assert action["runs"]["using"] == "composite"
    scripts = [step["run"] for step in action["runs"]["steps"]]
    for script in scripts:
        # Inputs reach scripts through env only: `${{ }}` inside a script is a script injection.
        assert "${{" not in script, script
    assert any("--require-hashes" in script and "--only-binary :all:" in script for script in scripts)
    envs = [step.get("env", {}) for step in action["runs"]["steps"]]
    lock = next(env["LOCK"] for env in envs if "LOCK" in env)
    resolved = (path.parent / lock.removeprefix("${{ github.action_path }}/")).resolve()
    assert resolved == (CLIENT / "requirements.lock").resolve()
    python_path = next(env["PYTHONPATH"] for env in envs if "PYTHONPATH" in env)
    assert (path.parent / python_path.removeprefix("${{ github.action_path }}/")).resolve() == CLIENT.resolve()


def test_the_gitlab_template_fetches_the_client_by_its_commit_hash():
    spec, jobs = yaml.safe_load_all((CLIENT / "gitlab" / "tpx-exchange.yml").read_text())
    assert spec["spec"]["inputs"]["ref"]["regex"] == "^[0-9a-f]{40}$"
    job = jobs[".tpx-exchange"]
    script = "\n".join(job["before_script"])
    assert 'git -C /tmp/tpx-client rev-parse HEAD)" = "$TPX_CLIENT_REF"' in script
    assert "--require-hashes" in script and "--only-binary :all:" in script
    assert job["id_tokens"]["TPX_ID_TOKEN"]["aud"] == "$[[ inputs.audience ]]"
    assert any("revoke" in line for line in job["after_script"])


def test_the_ci_docs_install_nothing_from_an_index_under_tpxs_name():
    docs = (ROOT / "docs" / "ci.md").read_text()
    assert not re.search(r"pip install[^\n`]*\btpx(-ci)?\b(?![-/.])", docs), "an unpublished name anyone could claim"
    references = re.findall(r"uses: your-org/tpx/[\w/]+@([^\s`]+)", docs) + re.findall(r"\bref: (\S+)", docs)
    assert len(references) >= 6 and all(FULL_SHA.match(ref) for ref in references), references


def test_the_client_runs_from_a_checkout_with_only_its_locked_dependencies(tmp_path):
    """What the action does, in a clean venv: hashed dependencies, then the client from the commit's files."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--require-hashes", "--only-binary", ":all:", "-r", str(CLIENT / "requirements.lock")],
                   check=True, timeout=300)
    probe = ("import sys, tpx.ci.commands, tpx.ci.cargo_credential; "
             "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'asyncpg','aio_pika','uvicorn',"
             "'starlette','structlog','jwt','tpx.core'})))")
    env = {"PYTHONPATH": str(CLIENT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == ""
    version = subprocess.run([str(python), "-m", "tpx.ci", "--version"], capture_output=True, text=True, env=env,
                             check=True)
    assert version.stdout.startswith("tpx-ci ")
