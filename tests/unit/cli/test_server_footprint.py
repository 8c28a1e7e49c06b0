"""A server process loads what it serves, not the operator and CI tooling beside it in `tpx`."""

from __future__ import annotations

import subprocess
import sys

# What `tpx exchange` must not import: AMQP client libraries (its relay speaks AMQP through
# tpx.core.relay.confirming_publisher), the HTTP client, and the CI client.
NOT_IN_THE_EXCHANGE = ("aio_pika", "aiormq", "httpx", "tpx.ci", "tpx.cli.demo", "tpx.cli.audit", "tpx.cli.admin")

# `tpx exchange` as the console script runs it, with the server itself replaced by what it imports.
PROBE = """
import sys
from tpx.cli import main, services
def serve(args):
    import tpx.exchange.asgi, tpx.exchange.app, tpx.core.relay.relay
    return 0
services.cmd_exchange = serve
assert main.main(["exchange"]) == 0
print(",".join(sorted(m for m in {names} if m in sys.modules)))
"""


def test_the_exchange_process_imports_no_client_library():
    probe = PROBE.format(names=repr(NOT_IN_THE_EXCHANGE))
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"the exchange process imports {loaded}"


def test_every_other_command_is_still_there():
    from tpx.cli import main
    commands = set(main.build_parser()._subparsers._group_actions[0].choices)
    assert set(main.SERVER_COMMANDS) < commands
    assert {"ci", "audit", "demo", "issuers", "publishers"} <= commands


def test_version_is_printed_not_a_usage_error(capsys):
    from importlib import metadata

    from tpx.cli import main
    try:
        main.main(["--version"])
    except SystemExit as exit:
        assert exit.code == 0
    assert capsys.readouterr().out.strip() == f"tpx {metadata.version('tpx')}"


def test_operator_commands_load_no_provider_until_they_need_one():
    """Every `tpx` command builds the whole parser; the providers (and msgspec) cost ~20 MB of each."""
    probe = ("import sys\nfrom tpx.cli import main\nmain.build_parser()\n"
             "print(','.join(m for m in ('msgspec', 'tpx.core.providers') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"building the parser imports {loaded}"


def test_the_command_lines_issuer_kinds_are_the_providers():
    from tpx.cli.admin import KINDS
    from tpx.core.providers import PROVIDERS

    assert KINDS == tuple(PROVIDERS)
