"""`check`: will this configuration work, before SPIRE finds out? Each check is one line, ok or FAIL with
the AWS code and what to grant; nothing is created or changed.

In order: the configuration (the rules of Validate), the credentials and who they are (STS
GetCallerIdentity), the role they assume, the endpoint, and what start-up reads: the aliases, the keys
behind them (DescribeKey, GetPublicKey, and one Sign of a random digest verified here against the public
key), ListKeys or GetResources for the disposal. The permissions that would change something (CreateKey,
CreateAlias, ...) are listed as not tested. A refused read is conclusive: its line names the permission.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from plugin import config as plugin_config
from plugin.algorithms import KeyType, key_type_for_spec
from plugin.cli import signature
from plugin.cli.permissions import DENIED_CODES, for_operation, required
from plugin.errors import one_line, quoted
from plugin.keypolicy import NOT_A_ROLE_WARNING, role_arn
from plugin.kmsapi import Alias, CallerIdentity, Kms, KmsError
from plugin.naming import TAG_KEY_ID, BuiltinScheme, CommunityScheme

ENABLED = "Enabled"
# Failures that mean no AWS answer came: the endpoint, not a permission, is the problem.
_NO_ANSWER = frozenset({"Unreachable", "Timeout", "UnparseableResponse"})
# Answers that mean the credentials themselves are refused.
_BAD_CREDENTIALS = frozenset(
    {
        "NoCredentials",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)
_TEST_SIGNATURES = {
    KeyType.EC_P256: ("ECDSA_SHA_256", signature.Hash.SHA256),
    KeyType.EC_P384: ("ECDSA_SHA_384", signature.Hash.SHA384),
    KeyType.RSA_2048: ("RSASSA_PKCS1_V1_5_SHA_256", signature.Hash.SHA256),
    KeyType.RSA_4096: ("RSASSA_PKCS1_V1_5_SHA_256", signature.Hash.SHA256),
}
_CREDENTIAL_SOURCES = {
    "explicit": "access_key_id and secret_access_key in plugin_data",
    "env": "the environment (AWS_ACCESS_KEY_ID)",
    "shared-credentials-file": "the shared credentials file",
    "config-file": "the AWS config file",
    "assume-role": "a role of the AWS profile",
    "assume-role-with-web-identity": "web identity (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE: EKS IRSA)",
    "container-role": "the container's role (ECS task role, EKS Pod Identity)",
    "iam-role": "the EC2 instance's role (instance metadata)",
    "sso": "an SSO profile",
    "login": "an `aws login` profile",
    "custom-process": "the AWS profile's credential_process",
}


class Status(enum.Enum):
    OK = "ok"
    FAIL = "FAIL"
    WARN = "warn"
    SKIPPED = "skipped"
    UNTESTED = "untested"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    code: str | None = None
    # Permissions the failure shows are missing.
    grant: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "check": self.name,
            "status": self.status.name.lower(),
            "detail": self.detail,
        }
        if self.code is not None:
            document["code"] = self.code
        if self.grant:
            document["grant"] = list(self.grant)
        return document


@dataclass(frozen=True)
class Target:
    """What to check: the plugin_data text and trust domain, as SPIRE would pass them, and where they
    came from (for the first line)."""

    plugin_data: str
    trust_domain: str
    source: str
    # What was found about the plugin block itself (its plugin_cmd, its plugin_checksum).
    block_checks: tuple[Check, ...] = ()


class CheckedKms(Kms, Protocol):
    @property
    def endpoint_url(self) -> str: ...

    def credential_method(self) -> str | None: ...


Connect = Callable[[plugin_config.Config, bool], CheckedKms]


@dataclass
class Report:
    target: Target
    checks: list[Check] = field(default_factory=list)
    identity: CallerIdentity | None = None
    role_identity: CallerIdentity | None = None

    @property
    def ok(self) -> bool:
        return all(check.status is not Status.FAIL for check in self.checks)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(grant for check in self.checks for grant in check.grant))

    def add(
        self, name: str, status: Status, detail: str, code: str | None = None, grant: Sequence[str] = ()
    ) -> None:
        self.checks.append(Check(name, status, detail, code, tuple(grant)))

    def to_json(self) -> dict[str, Any]:
        def identity(caller: CallerIdentity | None) -> dict[str, str] | None:
            return None if caller is None else {"arn": caller.arn, "account": caller.account}

        return {
            "ok": self.ok,
            "source": self.target.source,
            "trust_domain": self.target.trust_domain,
            "identity": identity(self.identity),
            "role_identity": identity(self.role_identity),
            "checks": [check.to_json() for check in self.checks],
            "missing_permissions": list(self.missing),
            "untested_permissions": [c.name for c in self.checks if c.status is Status.UNTESTED],
        }


def run(target: Target, connect: Connect) -> Report:
    report = Report(target)
    report.checks.extend(target.block_checks)
    config = _configuration(report)
    if config is None:
        report.add("AWS", Status.SKIPPED, "not checked until the configuration is valid")
        return report
    server_id = _server_id(report, config)
    kms = _identity(report, config, connect)
    if kms is None:
        report.add("KMS", Status.SKIPPED, "not checked without working credentials")
        return report
    tried = _kms(report, config, server_id, kms)
    if report.role_identity is not None:
        tried.add("sts:AssumeRole")
    for permission in required(config):
        if permission.action in tried:
            continue
        if permission.harmless:
            report.add(
                permission.action, Status.UNTESTED, f"for {permission.used_for}: nothing to try it on yet"
            )
        else:
            report.add(
                permission.action,
                Status.UNTESTED,
                f"for {permission.used_for}: not tried, as trying it would change your keys",
            )
    return report


# -- configuration ------------------------------------------------------------------------------------


def _configuration(report: Report) -> plugin_config.Config | None:
    target = report.target
    try:
        config = plugin_config.parse_config(target.plugin_data, target.trust_domain)
    except plugin_config.ConfigError as err:
        for problem in err.problems:
            report.add("configuration", Status.FAIL, problem)
        return None
    problems = plugin_config.check_files(config)
    report.add(
        "configuration",
        Status.FAIL if problems else Status.OK,
        f"{target.source}: region {config.region}, {_scheme_text(config)}"
        + (f", trust domain {target.trust_domain}" if target.trust_domain else ""),
    )
    for problem in problems:
        report.add("configuration", Status.FAIL, problem)
    for warning in config.warnings:
        report.add("configuration", Status.WARN, warning)
    return None if problems else config


def _scheme_text(config: plugin_config.Config) -> str:
    if config.key_prefix is not None:
        return f"community naming scheme (key_prefix {quoted(config.key_prefix)})"
    discovery = ", tag-based key discovery" if config.enable_tag_based_key_discovery else ""
    return f"built-in naming scheme{discovery}"


def _server_id(report: Report, config: plugin_config.Config) -> str | None:
    source = config.server_id
    if source is None:
        return None
    server_id = plugin_config.read_server_id(source)
    if isinstance(source, plugin_config.ServerIdValue):
        report.add("server id", Status.OK, f"{quoted(source.value)} (key_identifier_value)")
    elif server_id is None:
        report.add(
            "server id",
            Status.OK,
            f"{source.key} {quoted(source.path, 256)} does not exist yet: the first start writes a new id",
        )
    else:
        report.add(
            "server id", Status.OK, f"{quoted(server_id)} (from {source.key} {quoted(source.path, 256)})"
        )
    return server_id


# -- identity -----------------------------------------------------------------------------------------


def _identity(report: Report, config: plugin_config.Config, connect: Connect) -> CheckedKms | None:
    base = connect(config, False)
    try:
        method = base.credential_method()
    except KmsError as err:
        # A source of the chain refused or could not be reached (the Pod Identity agent answering 401):
        # which source, and the code the plugin would report.
        step = err.operation.partition(" (")[2].rstrip(")") or "the credential chain"
        report.add("credentials", Status.FAIL, f"{step}: {_said(err)}", err.code)
        return None
    except Exception as err:
        # A link of the credential chain failed outright in a way `translate` does not code (a broken
        # profile).
        report.add(
            "credentials", Status.FAIL, f"the credential chain failed: {_say(err)}", type(err).__name__
        )
        return None
    if method is None:
        report.add(
            "credentials",
            Status.FAIL,
            "no AWS credentials found: set access_key_id and secret_access_key, or run where the SDK's "
            "default chain finds some (environment, AWS_PROFILE, EKS IRSA or Pod Identity, an instance role)",
            "NoCredentials",
        )
        return None
    source = _CREDENTIAL_SOURCES.get(method, method)
    try:
        report.identity = base.caller_identity()
    except KmsError as err:
        report.add("credentials", Status.FAIL, f"from {source}: STS {err.operation}: {_said(err)}", err.code)
        return None
    report.add(
        "credentials", Status.OK, f"from {source}: {report.identity.arn} (account {report.identity.account})"
    )
    role = config.assume_role
    if role is None:
        return base
    kms = connect(config, True)
    try:
        report.role_identity = kms.caller_identity()
    except KmsError as err:
        grant: tuple[str, ...] = ()
        if err.code in DENIED_CODES:
            grant = ("sts:AssumeRole",)
            advice = (
                f": allow sts:AssumeRole on {role.role_arn} to {report.identity.arn}, and trust it in the "
                "role's trust policy" + (" (with the external id given)" if role.external_id else "")
            )
        else:
            advice = ""
        report.add("assume role", Status.FAIL, f"{role.role_arn}: {_said(err)}{advice}", err.code, grant)
        return None
    report.add("assume role", Status.OK, f"{role.role_arn}: KMS is used as {report.role_identity.arn}")
    return kms


# -- KMS ----------------------------------------------------------------------------------------------


def _kms(report: Report, config: plugin_config.Config, server_id: str | None, kms: CheckedKms) -> set[str]:
    """The checks against KMS; returns the permissions they tried."""
    tried: set[str] = set()
    caller = report.role_identity or report.identity
    who = caller.arn if caller is not None else "this identity"
    endpoint = kms.endpoint_url
    try:
        aliases = list(kms.list_aliases())
    except KmsError as err:
        if err.code in _NO_ANSWER or err.code.isdigit():
            report.add("endpoint", Status.FAIL, f"{endpoint} did not answer as KMS: {_said(err)}", err.code)
            return tried
        report.add("endpoint", Status.OK, f"{endpoint} answered")
        tried.add("kms:ListAliases")
        _refused(report, "kms:ListAliases", err, "*", who)
        return tried
    report.add("endpoint", Status.OK, f"{endpoint} answered")
    tried.add("kms:ListAliases")

    if config.key_prefix is not None:
        scheme: BuiltinScheme | CommunityScheme = CommunityScheme(config.key_prefix)
    elif server_id is not None:
        scheme = BuiltinScheme(config.trust_domain, server_id)
    else:
        scheme = BuiltinScheme(config.trust_domain, "<new id>")
    ours = [
        (key_id, alias) for alias in aliases if (key_id := _own_key_id(scheme, alias, server_id)) is not None
    ]
    report.add(
        "kms:ListAliases",
        Status.OK,
        f"{len(aliases)} aliases in {config.region}, {len(ours)} under {scheme.alias_prefix}"
        + (
            " (no server id yet: none can be this server's)"
            if server_id is None and config.key_prefix is None
            else ""
        ),
    )
    targets: list[tuple[str, str, str]] = [
        (key_id, alias.name, alias.target_key_id or alias.name) for key_id, alias in ours
    ]

    if isinstance(scheme, BuiltinScheme):
        if config.enable_tag_based_key_discovery:
            tried.add("tag:GetResources")
            targets.extend(_tagged(report, kms, scheme, server_id, {key_id for key_id, _, _ in targets}, who))
        else:
            tried.add("kms:ListKeys")
            try:
                next(iter(kms.list_keys()), None)
                report.add(
                    "kms:ListKeys", Status.OK, "allowed (the disposal sweep lists keys no alias points at)"
                )
            except KmsError as err:
                _refused(report, "kms:ListKeys", err, "*", who)

    for key_id, alias_name, target in targets:
        _key(report, kms, key_id, alias_name, target, who, tried)
    if not targets:
        report.add("keys", Status.OK, "none yet: SPIRE Server makes its keys at its first start")
    if isinstance(scheme, BuiltinScheme) and config.key_policy_file is None:
        _default_policy(report)
    return tried


def _own_key_id(scheme: BuiltinScheme | CommunityScheme, alias: Alias, server_id: str | None) -> str | None:
    if not alias.target_key_id or (isinstance(scheme, BuiltinScheme) and server_id is None):
        return None
    return scheme.key_id_for(alias.name)


def _tagged(
    report: Report, kms: CheckedKms, scheme: BuiltinScheme, server_id: str | None, aliased: set[str], who: str
) -> Iterator[tuple[str, str, str]]:
    """Start-up's GetResources; yields the keys tagged as this server's that no alias names."""
    filters = scheme.own_tag_filter() if server_id is not None else scheme.trust_domain_tag_filter(True)
    try:
        tagged = list(kms.get_resources(filters))
    except KmsError as err:
        where = " in an identity-based IAM policy (a key policy cannot grant it)"
        _refused(report, "tag:GetResources", err, "*", who, where)
        return
    if server_id is None:
        report.add("tag:GetResources", Status.OK, "allowed")
        return
    report.add("tag:GetResources", Status.OK, f"{len(tagged)} keys tagged as this server's")
    for resource in tagged:
        key_id = resource.tags.get(TAG_KEY_ID)
        if key_id and key_id not in aliased:
            # Start-up uses a tagged key whose alias is missing (and the heartbeat makes the alias again).
            yield key_id, "(found by tag)", resource.arn


def _key(
    report: Report, kms: CheckedKms, key_id: str, alias_name: str, target: str, who: str, tried: set[str]
) -> bool:
    """DescribeKey, GetPublicKey and Sign for one key, the signature verified here; True when all pass."""
    name = f"key {key_id}"
    arn = target
    try:
        tried.add("kms:DescribeKey")
        description = kms.describe_key(target)
        arn = description.arn
        if description.key_state != ENABLED:
            report.add(
                name,
                Status.FAIL,
                f"{alias_name} points to {description.arn}, which is {description.key_state}: start-up "
                "stops with FAILED_PRECONDITION. Enable the key (or cancel its deletion), or delete the "
                "alias to let SPIRE make a new key",
                description.key_state,
            )
            return False
        key_type = key_type_for_spec(description.key_spec)
        if key_type is None:
            report.add(
                name,
                Status.WARN,
                f"{alias_name} points to {description.arn}, a {description.key_spec} key SPIRE cannot use: "
                "start-up ignores it",
            )
            return False
        tried.add("kms:GetPublicKey")
        public = kms.get_public_key(description.arn)
        algorithm, hash_algorithm = _TEST_SIGNATURES[key_type]
        digest = hashlib.new(
            hash_algorithm.name.lower(), b"aws-kms-keymanager check " + os.urandom(16)
        ).digest()
        tried.add("kms:Sign")
        signed = kms.sign(description.arn, digest, algorithm)
    except KmsError as err:
        operation = err.operation.split(" ")[0]
        _refused(report, for_operation(operation), err, arn, who, name=name)
        return False
    try:
        signature.verify(signature.load_public_key(public.der), digest, signed, hash_algorithm)
    except signature.BadSignature as err:
        report.add(
            name,
            Status.FAIL,
            f"{description.arn}: the signature KMS made does not verify under its public key: {err}",
        )
        return False
    report.add(
        name,
        Status.OK,
        f"{alias_name} -> {description.arn} ({description.key_spec}): DescribeKey, GetPublicKey, "
        f"Sign {algorithm} verified here",
    )
    return True


def _default_policy(report: Report) -> None:
    caller = report.role_identity or report.identity
    if caller is None:
        return
    role = role_arn(caller.arn)
    if role is None:
        report.add("default key policy", Status.WARN, NOT_A_ROLE_WARNING)
    else:
        report.add("default key policy", Status.OK, f"new keys get a key policy giving {role} kms:*")


def _refused(
    report: Report,
    action: str,
    err: KmsError,
    resource: str,
    who: str,
    where: str | None = None,
    name: str | None = None,
) -> None:
    """A FAIL line for a refused call; when a policy refused it, naming the permission to grant."""
    if err.code in DENIED_CODES:
        on = "" if resource == "*" else f" on {resource}"
        if where is None:
            # KMS permissions on a key can come from the key policy too; on * only from IAM.
            where = " in an IAM policy" if resource == "*" else " in an IAM policy or the key policy"
        detail = f"{action} denied ({err.code}): grant {action}{on} to {who}{where}"
        report.add(name or action, Status.FAIL, detail, err.code, (action,))
    elif err.code in _BAD_CREDENTIALS:
        report.add(
            name or action,
            Status.FAIL,
            f"{err.operation}: the credentials are refused: {_said(err)}",
            err.code,
        )
    else:
        report.add(name or action, Status.FAIL, f"{err.operation}: {_said(err)}", err.code)


def _said(err: KmsError) -> str:
    return f"{err.code}: {err.message}" if err.message else err.code


def _say(err: Exception) -> str:
    return one_line(str(err), 240) or type(err).__name__
