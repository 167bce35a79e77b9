"""Entry point. SPIRE starts us with the go-plugin magic cookie; a human without it gets a CLI."""

from __future__ import annotations

import os
import sys

from plugin import PLUGIN_NAME, __version__

MAGIC_COOKIE_KEY = "KeyManager"
MAGIC_COOKIE_VALUE = "KeyManager"
# The operator commands (plugin.cli.COMMANDS); spelled here so that serving never imports plugin.cli.
COMMANDS = ("check", "keys")

NOT_A_COMMAND = """\
This binary is a plugin. These are not meant to be executed directly.
Please execute the program that consumes these plugins, which will
load any plugins automatically
"""

HELP = f"""\
{PLUGIN_NAME} {__version__}: a SPIRE Server KeyManager plugin that keeps its keys in AWS KMS.

SPIRE Server starts this program itself. Configure it in server.conf:

    KeyManager "aws_kms" {{
        plugin_cmd = "/path/to/{PLUGIN_NAME}"
        plugin_checksum = "<sha256 of this file>"
        plugin_data {{
            region = "us-east-2"
        }}
    }}

Commands, for operators (they change nothing unless asked to):
    check --config server.conf    check the KeyManager configuration against AWS: credentials, endpoint,
                                  permissions, and a signature by each key, verified here
    keys --config server.conf     list the trust domain's SPIRE keys, what the disposal sweep would do to
                                  each and when, and what they cost; --prune --yes takes the steps due now
    COMMAND --help                every option of a command

Options:
    --version   print the version and exit
    --help      print this help and exit

See the README for every plugin_data key.
"""


def main(argv: list[str]) -> int:
    if argv[:1] and argv[0] in COMMANDS and os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        # Imported only for a command: what SPIRE starts never loads them.
        from plugin import cli

        return cli.main(argv)
    if "--version" in argv or "version" in argv[:1]:
        from plugin import buildinfo

        print(buildinfo.current().line())
        return 0
    if "--help" in argv or "-h" in argv or "help" in argv[:1]:
        print(HELP, end="")
        return 0
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        sys.stderr.write(NOT_A_COMMAND)
        return 1

    from plugin import allocator, log

    log.setup()
    allocator.bound_heap_growth()
    # gRPC's C core logs in its own format on stderr, at info level things such as a GOAWAY from SPIRE's
    # host-services server; SPIRE would take each line for a raw debug message. Errors still show. Read
    # when gRPC loads, so set first; an operator's own setting wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # gRPC's EventEngine reads and writes the socket on threads of its own and hands each completion to
    # the Python server's polling thread: twice the thread switches per call of the classic poller, which
    # serves from the polling thread itself (12 against 6 per unary call, 0.41 against 0.33 ms of CPU).
    os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_listener,-event_engine_for_all_other_endpoints")
    # Imported only now, so a human asking for --help does not wait for gRPC to load.
    from plugin import goplugin, service

    services = service.PluginServices.create()
    return goplugin.serve(
        services.register,
        on_stop=services.stop,
        host_services=services.host_services,
        quick_methods=service.QUICK_METHODS,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
