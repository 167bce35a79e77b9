"""Reading SPIRE's server.conf for the operator commands: the trust domain, the KeyManager block and its
plugin_data as written, in HCL and JSON; mistakes named by line or setting, never by quoting the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from plugin.cli.serverconf import (
    ServerConfError,
    bare_plugin_data,
    choose_key_manager,
    expand_env,
    parse_server_conf,
    read_file,
)
from plugin.config import ConfigError, parse_config

SECRET = "hunter2-Sup3rS3cret"

SERVER_CONF = f"""
server {{
    bind_address = "0.0.0.0"
    bind_port = "8081"
    trust_domain = "example.org"
    ca_ttl = "24h"
    federation {{ bundle_endpoint {{ address = "0.0.0.0", port = 8443 }} }}
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "postgres"
            connection_string = "postgres://spire:{SECRET}@db/spire"
        }}
    }}
    NodeAttestor "k8s_psat" {{
        plugin_data {{ clusters = {{ "demo" = {{ service_account_allow_list = ["spire:spire-agent"] }} }} }}
    }}
    KeyManager "aws_kms" {{
        plugin_cmd = "/opt/spire/plugins/aws-kms-keymanager"
        plugin_checksum = "abc123"
        plugin_data {{
            region = "us-east-1"   # a }} in a comment
            key_identifier_value = "server-a"
            key_tags = {{ team = "identity" }}
            key_policy_file = <<EOT
}} in a heredoc
EOT
        }}
    }}
}}

health_checks {{
    listener_enabled = true
    bind_port = "8080"
}}
"""


def test_the_key_manager_block_and_trust_domain_of_a_real_server_conf() -> None:
    conf = parse_server_conf(SERVER_CONF)
    assert conf.trust_domain == "example.org"
    (block,) = conf.key_managers
    assert (block.name, block.plugin_cmd, block.plugin_checksum) == (
        "aws_kms",
        "/opt/spire/plugins/aws-kms-keymanager",
        "abc123",
    )
    assert block.plugin_data is not None
    config = parse_config(block.plugin_data, "example.org")
    assert config.region == "us-east-1" and dict(config.key_tags) == {"team": "identity"}
    assert "# a } in a comment" in block.plugin_data, "plugin_data is handed on as written"


def test_plugin_data_keeps_what_the_plugin_parser_must_refuse() -> None:
    conf = parse_server_conf(
        'plugins { KeyManager "aws_kms" { plugin_data { region = "a" \n region = "b" \n days = 7 * 2 } } }'
    )
    text = conf.key_managers[0].plugin_data
    assert text is not None
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "example.org")
    assert any("region is given twice" in problem for problem in refused.value.problems)
    assert any("days" in problem for problem in refused.value.problems)


def test_the_same_file_in_json() -> None:
    document = {
        "server": {"trust_domain": "example.org"},
        "plugins": {
            "DataStore": [{"sql": {"plugin_data": {"connection_string": SECRET}}}],
            "KeyManager": [
                {
                    "aws_kms": {
                        "plugin_cmd": "/x",
                        "plugin_data": {"region": "us-east-1", "key_tags": {"a": "b"}},
                    }
                }
            ],
        },
    }
    conf = parse_server_conf(json.dumps(document))
    (block,) = conf.key_managers
    assert conf.trust_domain == "example.org" and block.plugin_cmd == "/x"
    assert block.plugin_data is not None
    assert parse_config(block.plugin_data, "example.org").region == "us-east-1"


def test_json_plugin_data_keeps_a_key_given_twice() -> None:
    text = '{"plugins": {"KeyManager": {"k": {"plugin_data": {"region": "a", "region": "b"}}}}}'
    block = parse_server_conf(text).key_managers[0]
    assert block.plugin_data is not None
    with pytest.raises(ConfigError, match="region is given twice"):
        parse_config(block.plugin_data, "")


def test_plugin_data_file_and_enabled() -> None:
    conf = parse_server_conf(
        'plugins {\n KeyManager "disk" { enabled = false \n plugin_data { keys_path = "/k" } }\n'
        ' KeyManager "aws_kms" { plugin_cmd = "/p" \n plugin_data_file = "/etc/spire/kms.hcl" }\n}'
    )
    disk, kms = conf.key_managers
    assert not disk.enabled and kms.enabled
    assert (kms.plugin_data, kms.plugin_data_file) == (None, "/etc/spire/kms.hcl")
    assert choose_key_manager(conf, None, None) is kms, "the only enabled one"


def test_choosing_the_key_manager() -> None:
    conf = parse_server_conf(
        'plugins {\n KeyManager "a" { plugin_cmd = "/bin/true" }\n KeyManager "b" { plugin_cmd = "/x" }\n}'
    )
    assert choose_key_manager(conf, "b", None).name == "b"
    assert choose_key_manager(conf, None, os.path.realpath("/bin/true")).name == "a", "the one that is us"
    with pytest.raises(ServerConfError, match=r'several KeyManager plugins \("a", "b"\).*--plugin-name'):
        choose_key_manager(conf, None, None)
    with pytest.raises(ServerConfError, match=r'no KeyManager "c" \(it has: "a", "b"\)'):
        choose_key_manager(conf, "c", None)
    with pytest.raises(ServerConfError, match="no enabled KeyManager plugin"):
        choose_key_manager(parse_server_conf('server { trust_domain = "x" }'), None, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('server {\n trust_domain = "a"\n trust_domain = "b"\n}', "server.trust_domain is given twice"),
        ("server { trust_domain = 5 }", "must be a string"),
        ('plugins { KeyManager "k" { plugin_data {} \n plugin_data_file = "/f" } }', "both plugin_data and"),
        ('plugins { KeyManager "k" { plugin_data = "region = 1" } }', 'plugin_data of KeyManager "k"'),
        ('server {\n trust_domain = "a"\n', "ends"),
        ('server {\n\n trust_domain = x + "a"\n}', "on line 3"),
        (
            'server {\n connection_string = "' + SECRET + "\n}",
            "line 3, column 1: EOF before closing string quote",
        ),
        ('server { x = "' + SECRET + '" $ }', "line 1, column "),
        ('{"server": {"connection_string": "' + SECRET + '"', "not valid JSON: line 1"),
    ],
)
def test_mistakes_are_named_without_quoting_the_file(text: str, message: str) -> None:
    with pytest.raises(ServerConfError) as refused:
        parse_server_conf(text)
    assert message in str(refused.value)
    assert SECRET not in str(refused.value)
    assert "\n" not in str(refused.value)


def test_expand_env_as_spire_server_expandenv() -> None:
    environ = {"REGION": "eu-west-1", "TD": "example.org"}
    assert expand_env('region = "$REGION" td = "${TD}" x = "$UNSET"', environ) == (
        'region = "eu-west-1" td = "example.org" x = ""'
    )


@pytest.mark.parametrize(
    "text",
    [
        'region = "us-east-1"\nkey_prefix = "a/"\n',
        'plugin_data {\n region = "us-east-1"\n key_prefix = "a/"\n}\n',
        'plugin_data = {\n region = "us-east-1"\n key_prefix = "a/"\n}\n',
    ],
)
def test_a_bare_plugin_data_file_with_or_without_its_block(text: str) -> None:
    config = parse_config(bare_plugin_data(text), "")
    assert (config.region, config.key_prefix) == ("us-east-1", "a/")


def test_a_bare_file_that_is_more_than_one_block_is_left_to_the_plugin_parser() -> None:
    text = 'plugin_data { region = "a" }\nregion = "b"\n'
    assert bare_plugin_data(text) == text


def test_files_that_are_not_a_server_conf(tmp_path: Path) -> None:
    with pytest.raises(ServerConfError, match="cannot be read: No such file or directory"):
        read_file(str(tmp_path / "missing.conf"), "--config")
    with pytest.raises(ServerConfError, match="is not a regular file"):
        read_file(str(tmp_path), "--config")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ServerConfError, match="is not a regular file"):
        read_file(str(fifo), "--config")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(ServerConfError, match="is not UTF-8 text") as refused:
        read_file(str(binary), "--config")
    assert SECRET not in str(refused.value)
    large = tmp_path / "large"
    large.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ServerConfError, match="larger than"):
        read_file(str(large), "--config")
