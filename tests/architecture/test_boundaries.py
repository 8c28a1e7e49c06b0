"""The design's boundaries, held by checks that fail when someone crosses them.

- `lint-imports` (contracts in pyproject.toml) runs in `make test`; here it is shown
  to catch a worker that imports the exchange, on a copy of the tree.
- A worker process, once its service module is loaded, holds neither Starlette
  nor any module of the exchange.
- SQL lives in the data layer (`tpx.core.db`) only.
- Every event type is built in `tpx.core.events.builders`.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tpx.core.events import schemas
from tests.support.paths import ROOT

ROOTS = ("shared", "services/exchange", "services/jwks-refresher", "services/revoker", "clients/ci")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run the import contracts of `tree`'s pyproject.toml on `tree`'s own sources."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(tree / root) for root in ROOTS)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=120)


def copy_of_the_tree(destination: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    for root in ROOTS:
        shutil.copytree(ROOT / root, destination / root, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def test_the_contracts_hold_on_the_tree_as_it_is(tmp_path):
    result = lint_imports(copy_of_the_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "statement", "broken"), [
    ("services/revoker/tpx/revoker/sweeper.py", "import tpx.exchange.app", "tpx.revoker is not allowed to import tpx.exchange"),
    ("services/jwks-refresher/tpx/jwks_refresher/fetch.py", "from tpx.revoker import consumer",
     "tpx.jwks_refresher is not allowed to import tpx.revoker"),
    ("shared/tpx/core/config.py", "import tpx.exchange.minting", "tpx.core is not allowed to import tpx.exchange"),
    ("shared/tpx/core/serving/ops.py", "import starlette.responses", "tpx.core is not allowed to import starlette"),
    ("clients/ci/tpx/ci/client.py", "import tpx.core.errors", "tpx.ci is not allowed to import tpx.core"),
    ("shared/tpx/core/db/pool.py", "import tpx.ci.client", "tpx.core is not allowed to import tpx.ci"),
])
def test_a_forbidden_import_breaks_the_check(tmp_path, module, statement, broken):
    tree = copy_of_the_tree(tmp_path)
    source = tree / module
    source.write_text(source.read_text() + f"\n{statement}  # added by the test\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    assert broken in result.stdout, result.stdout


@pytest.mark.parametrize("service", ["tpx.revoker.service", "tpx.jwks_refresher.service"])
def test_a_worker_runs_without_starlette_or_the_exchange(service):
    probe = (f"import sys, {service}; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'starlette' or m.startswith('tpx.exchange')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


# tpx writes SQL keywords in capitals, so prose ("select the publisher from ...") is not mistaken for SQL.
_SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|pg_notify|pg_advisory)\b",
                  re.DOTALL)


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_sql_lives_in_the_data_layer_only():
    data_layer = ROOT / "shared" / "tpx" / "core" / "db"
    offenders = [f"{path.relative_to(ROOT)}:{line}: {text.strip()[:60]!r}"
                 for root in ROOTS for path in sorted((ROOT / root).rglob("*.py"))
                 if data_layer not in path.parents
                 for line, text in _string_literals(path) if _SQL.search(text)]
    assert offenders == [], "SQL outside tpx.core.db:\n" + "\n".join(offenders)


def test_the_sql_check_sees_sql_and_not_prose():
    for sql in ("SELECT id FROM tokens", "UPDATE issuers SET enabled = false", "DELETE FROM outbox",
                "INSERT INTO used_jtis", "SELECT pg_notify($1, $2)", "SELECT\n  count(*)\nFROM publishers"):
        assert _SQL.search(sql), sql
    assert not _SQL.search("select the publisher from the list")
    assert not _SQL.search("the token was selected")


def test_every_event_type_has_its_builder():
    source = (ROOT / "shared" / "tpx" / "core" / "events" / "builders.py").read_text()
    constants = {value: name for name, value in vars(schemas.event_types).items()
                 if isinstance(value, str) and value in schemas.all_types()}
    missing = [name for name in constants.values() if f"types.{name}" not in source]
    admin_changes = {"PUBLISHER_CREATED", "PUBLISHER_DELETED", "ISSUER_CREATED", "ISSUER_UPDATED", "ISSUER_DELETED"}
    assert sorted(set(missing) - admin_changes) == [], "event types without a builder in tpx.core.events.builders"
    assert "def admin_change(" in source
