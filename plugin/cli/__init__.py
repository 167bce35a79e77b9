"""The operator commands, `check` and `keys`, run from the same binary SPIRE starts as a plugin (without
go-plugin's magic cookie). Nothing here is imported on the serving path.

Exit codes: 0 all good; 1 a check failed, a read failed or a prune step failed; 2 the command line or its
input files cannot be used (SPIRE's own configuration problems are check failures, 1).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from plugin import PLUGIN_NAME
from plugin import config as plugin_config
from plugin.cli import output, serverconf
from plugin.cli.check import Check, Status, Target

COMMANDS = ("check", "keys")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command line or input file: exit 2 with this message."""


def main(argv: Sequence[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    _logging(args.verbose)
    try:
        if args.command == "keys" and args.prune and not args.yes:
            raise UsageError("--prune schedules keys for deletion: add --yes to confirm")
        target = _target(args)
        if args.command == "check":
            return _check(args, target, out)
        return _keys(args, target, out, err)
    except UsageError as problem:
        err.write(output.redact_text(f"{PLUGIN_NAME} {args.command}: {problem}\n"))
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PLUGIN_NAME, description="Operator commands of the SPIRE KMS plugin."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="check a configuration against AWS without changing anything",
        description="Check the KeyManager configuration of server.conf against AWS, changing nothing: one "
        "line per check, exit status 0 only when none fails.",
    )
    keys = commands.add_parser(
        "keys",
        help="list the trust domain's SPIRE keys and what the disposal sweep would do to them",
        description="List the SPIRE keys of the trust domain in the account and region, with what this "
        "server's disposal sweep would do to each and when (a dry run), and their monthly cost.",
    )
    for command in (check, keys):
        source = command.add_mutually_exclusive_group(required=True)
        source.add_argument("--config", metavar="FILE", help="SPIRE's server.conf (HCL or JSON)")
        source.add_argument(
            "--plugin-data", metavar="FILE", help="a bare plugin_data block (what plugin_data_file holds)"
        )
        command.add_argument("--plugin-name", metavar="NAME", help="the KeyManager block to use, by its name")
        command.add_argument("--trust-domain", metavar="TD", help="the trust domain (default: server.conf's)")
        command.add_argument(
            "--expand-env",
            action="store_true",
            help="expand $VARIABLES in server.conf, as spire-server -expandEnv",
        )
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")
        command.add_argument(
            "-v", "--verbose", action="store_true", help="log the plugin's debug lines on stderr"
        )
    keys.add_argument("--prune", action="store_true", help="schedule for deletion what the sweep would now")
    keys.add_argument("--yes", action="store_true", help="confirm --prune")
    return parser


def _logging(verbose: bool) -> None:
    if verbose:
        from plugin import log

        log.setup(logging.DEBUG)
    else:
        # The plugin's modules log for SPIRE; a command says what matters on its own lines.
        logging.getLogger().addHandler(logging.NullHandler())
        logging.getLogger().setLevel(logging.CRITICAL + 1)


def program_path() -> str | None:
    """This executable as SPIRE would name it in plugin_cmd: staticx's bootloader runs the program from
    where it unpacks it, and says where it was started from."""
    if os.environ.get("STATICX_PROG_PATH"):
        return os.environ["STATICX_PROG_PATH"]
    return sys.executable if getattr(sys, "frozen", False) else None


def _target(args: argparse.Namespace) -> Target:
    try:
        if args.plugin_data is not None:
            text = serverconf.read_file(args.plugin_data, "--plugin-data")
            return Target(
                plugin_data=serverconf.bare_plugin_data(text),
                trust_domain=args.trust_domain or "",
                source=f"plugin data {args.plugin_data}",
            )
        text = serverconf.read_file(args.config, "--config")
        if args.expand_env:
            text = serverconf.expand_env(text, os.environ)
        conf = serverconf.parse_server_conf(text)
        program = program_path()
        block = serverconf.choose_key_manager(conf, args.plugin_name, program)
    except serverconf.ServerConfError as err:
        raise UsageError(str(err)) from None
    block_checks = _block_checks(block, program)
    if block.plugin_data_file is not None:
        try:
            plugin_data = serverconf.read_file(block.plugin_data_file, "plugin_data_file")
        except serverconf.ServerConfError as err:
            raise UsageError(str(err)) from None
        source = f'KeyManager "{block.name}" in {args.config} (plugin_data_file {block.plugin_data_file})'
    else:
        plugin_data = block.plugin_data or ""
        source = f'KeyManager "{block.name}" in {args.config}'
    trust_domain = args.trust_domain if args.trust_domain is not None else conf.trust_domain
    return Target(plugin_data, trust_domain or "", source, block_checks)


def _block_checks(block: serverconf.PluginBlock, program: str | None) -> tuple[Check, ...]:
    name = f'KeyManager "{block.name}"'
    if block.plugin_cmd is None:
        detail = (
            f"{name} has no plugin_cmd: SPIRE runs its built-in plugin of that name; checked as this plugin "
            "would run with the same plugin_data"
        )
        return (Check("server.conf", Status.WARN, detail),)
    if program is None:
        return ()
    if not serverconf.same_file(block.plugin_cmd, program):
        detail = f"plugin_cmd of {name} is {block.plugin_cmd}, not this program ({program})"
        return (Check("server.conf", Status.WARN, detail),)
    if block.plugin_checksum is None:
        return (Check("server.conf", Status.OK, f"plugin_cmd of {name} is this program"),)
    problem = _checksum_problem(block.plugin_checksum, program)
    if problem is not None:
        return (Check("server.conf", Status.FAIL, f"plugin_checksum of {name}: {problem}"),)
    detail = f"plugin_cmd of {name} is this program, and plugin_checksum its SHA-256"
    return (Check("server.conf", Status.OK, detail),)


def _checksum_problem(expected: str, program: str) -> str | None:
    """Why SPIRE would refuse to start the program: its SHA-256 is not plugin_checksum."""
    digest = hashlib.sha256()
    try:
        with open(program, "rb") as binary:
            for chunk in iter(lambda: binary.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        return f"cannot be compared: {program} cannot be read: {err.strerror or err}"
    if digest.hexdigest() == expected.strip().lower():
        return None
    return f"this program's SHA-256 is {digest.hexdigest()}: SPIRE refuses to start the plugin"


def _check(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    from plugin.cli import aws, check

    _guard(target)
    report = check.run(target, aws.connect)
    if args.json:
        out.write(output.to_json(report.to_json()))
    else:
        rows = [(c.status.value, c.name, c.detail) for c in report.checks]
        out.write(output.table(("STATUS", "CHECK", "DETAIL"), rows))
        failed = sum(1 for c in report.checks if c.status is check.Status.FAIL)
        summary = f"\n{len(report.checks)} checks, {failed} failed"
        if report.missing:
            summary += f"; missing permissions: {', '.join(report.missing)}"
        out.write(output.redact_text(summary + "\n"))
    return EXIT_OK if report.ok else EXIT_FAILED


def _guard(target: Target) -> None:
    try:
        config = plugin_config.parse_config(target.plugin_data, target.trust_domain)
    except plugin_config.ConfigError:
        output.guard_secrets()
        return
    output.guard_secrets(config.credentials.secret_access_key if config.credentials else None)


def _keys(args: argparse.Namespace, target: Target, out: TextIO, err: TextIO) -> int:
    _guard(target)
    try:
        config = plugin_config.parse_config(target.plugin_data, target.trust_domain)
        server_id = plugin_config.read_server_id(config.server_id) if config.server_id else None
    except plugin_config.ConfigError as problem:
        raise UsageError("the configuration is invalid: " + "; ".join(problem.problems)) from None
    from plugin.cli import aws, keys
    from plugin.kmsapi import KmsError

    kms = aws.connect(config)
    now = datetime.datetime.now(datetime.UTC)
    try:
        found = keys.survey(kms, config, server_id, now)
    except KmsError as failure:
        err.write(output.redact_text(f"{PLUGIN_NAME} keys: {keys.failure_text(failure)}\n"))
        return EXIT_FAILED
    pruned = keys.prune(kms, found, config.deletion_window_days) if args.prune else None
    if args.json:
        document = keys.to_json(found, config)
        if pruned is not None:
            document["pruned"] = [keys.pruned_json(p) for p in pruned]
        out.write(output.to_json(document))
    else:
        out.write(keys.render(found, config))
        if pruned is not None:
            out.write("\n" + keys.render_pruned(pruned, found))
    failed = bool(found.problems) or any(p.outcome is keys.Outcome.FAILED for p in pruned or ())
    return EXIT_FAILED if failed else EXIT_OK
