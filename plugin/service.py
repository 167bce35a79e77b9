"""gRPC servicers for SPIRE's Init, Config and KeyManager services.

This is where protobuf messages become core calls and plugin errors become status codes, once. Nothing
below this module knows about gRPC.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from plugin import config as plugin_config
from plugin import deadline
from plugin import log as plugin_log
from plugin.algorithms import parse_key_type
from plugin.errors import ErrorKind, InvalidArgument, PluginError
from plugin.goplugin import HostServices
from plugin.hostmetrics import ADDRESS_WAIT_SECONDS, METRICS_SERVICE, HostMetrics
from plugin.keymanager import KeyManager, KeySettings, ManagedKey
from plugin.kmsapi import Kms
from plugin.lifecycle import DeletionQueue
from plugin.metrics import NO_METRICS, Metrics, Relay
from plugin.naming import BuiltinScheme
from plugin.rpcdecode import MethodRegistry, TolerantServer
from proto_gen.spire.config import config_pb2, config_pb2_grpc
from proto_gen.spire.init import init_pb2, init_pb2_grpc
from proto_gen.spire.keymanager import keymanager_pb2, keymanager_pb2_grpc

KEYMANAGER_SERVICE = "spire.plugin.server.keymanager.v1.KeyManager"
CONFIG_SERVICE = "spire.service.common.config.v1.Config"
# Reads of the cached keys: they take no lock held across I/O, so the gRPC server answers them at once on
# its polling thread.
QUICK_METHODS = (f"/{KEYMANAGER_SERVICE}/GetPublicKey", f"/{KEYMANAGER_SERVICE}/GetPublicKeys")

_STATUS = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

log = plugin_log.get_logger("service")
KmsFactory = Callable[[plugin_config.Config], Kms]
F = TypeVar("F", bound=Callable[..., Any])


def status_code(error: PluginError) -> grpc.StatusCode:
    return _STATUS[error.kind]


def _rpc(method: F) -> F:
    """Turn plugin errors into gRPC statuses; anything unexpected is logged and answered INTERNAL, and
    the plugin keeps running."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            with deadline.scope(context.time_remaining()):
                return method(self, request, context)
        except PluginError as err:
            level = log.warn if err.kind is ErrorKind.INTERNAL else log.debug
            level("Request failed", method=method.__name__, code=err.kind.name, error=err.message)
            context.abort(status_code(err), plugin_log.redact(err.message))
        except Exception as err:
            log.exception("Unexpected failure", method=method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, plugin_log.redact(f"{method.__name__}: {err}"))

    return wrapper  # type: ignore[return-value]


def _public_key(key: ManagedKey) -> keymanager_pb2.PublicKey:
    return keymanager_pb2.PublicKey(
        id=key.key_id, type=key.key_type.name, pkix_data=key.pkix_der, fingerprint=key.fingerprint
    )


def _require_key_id(key_id: str) -> None:
    if not key_id:
        raise InvalidArgument("key id is required")


class InitService(init_pb2_grpc.InitServicer):
    def __init__(
        self,
        on_host_services: Callable[[list[str]], None] = lambda names: None,
        on_deinit: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_host_services = on_host_services
        self._on_deinit = on_deinit

    def Init(self, request: init_pb2.InitRequest, context: grpc.ServicerContext) -> init_pb2.InitResponse:
        try:
            self._on_host_services(list(request.host_service_names))
        except Exception:
            # Telemetry is optional: a failure to set it up must not keep SPIRE from loading the plugin.
            log.exception("Setting up SPIRE's host services failed")
        return init_pb2.InitResponse(plugin_service_names=[KEYMANAGER_SERVICE, CONFIG_SERVICE])

    def Deinit(
        self, request: init_pb2.DeinitRequest, context: grpc.ServicerContext
    ) -> init_pb2.DeinitResponse:
        # SPIRE closes its host services right after: stop reporting to them first, quietly.
        self._on_deinit()
        return init_pb2.DeinitResponse()


class ConfigService(config_pb2_grpc.ConfigServicer):
    def __init__(self, keys: KeyManager, kms_factory: KmsFactory) -> None:
        self._keys = keys
        self._kms_factory = kms_factory

    @_rpc
    def Configure(
        self, request: config_pb2.ConfigureRequest, context: grpc.ServicerContext
    ) -> config_pb2.ConfigureResponse:
        trust_domain = request.core_configuration.trust_domain
        try:
            config = plugin_config.parse_config(request.hcl_configuration, trust_domain)
        except plugin_config.ConfigError as err:
            raise InvalidArgument(str(err)) from None
        if config.credentials is not None:
            plugin_log.register_secrets(config.credentials.secret_access_key)
        for warning in config.warnings:
            log.warn(warning)
        try:
            server_id = plugin_config.load_server_id(config.server_id) if config.server_id else None
            policy = plugin_config.read_key_policy(config.key_policy_file) if config.key_policy_file else None
        except plugin_config.ConfigError as err:
            raise InvalidArgument(str(err)) from None
        scheme = plugin_config.naming_scheme(config, server_id)
        settings = KeySettings(
            scheme=scheme,
            key_tags=dict(config.key_tags),
            key_policy=policy,
            deletion_window_days=config.deletion_window_days,
            tag_discovery=config.enable_tag_based_key_discovery,
            # As SPIRE's built-in aws_kms: without key_policy_file, a policy for the role we run as.
            default_key_policy=isinstance(scheme, BuiltinScheme),
        )
        self._keys.configure(settings, self._kms_factory(config))
        log.info(
            "Configured", region=config.region, alias_prefix=scheme.alias_prefix, trust_domain=trust_domain
        )
        return config_pb2.ConfigureResponse()

    @_rpc
    def Validate(
        self, request: config_pb2.ValidateRequest, context: grpc.ServicerContext
    ) -> config_pb2.ValidateResponse:
        try:
            config = plugin_config.parse_config(
                request.hcl_configuration, request.core_configuration.trust_domain
            )
        except plugin_config.ConfigError as err:
            return config_pb2.ValidateResponse(valid=False, notes=list(err.problems))
        notes = plugin_config.check_files(config)
        return config_pb2.ValidateResponse(valid=not notes, notes=notes)


class KeyManagerService(keymanager_pb2_grpc.KeyManagerServicer):
    def __init__(self, keys: KeyManager) -> None:
        self._keys = keys

    @_rpc
    def GenerateKey(
        self, request: keymanager_pb2.GenerateKeyRequest, context: grpc.ServicerContext
    ) -> keymanager_pb2.GenerateKeyResponse:
        _require_key_id(request.key_id)
        key = self._keys.generate_key(request.key_id, parse_key_type(request.key_type))
        return keymanager_pb2.GenerateKeyResponse(public_key=_public_key(key))

    @_rpc
    def GetPublicKey(
        self, request: keymanager_pb2.GetPublicKeyRequest, context: grpc.ServicerContext
    ) -> keymanager_pb2.GetPublicKeyResponse:
        _require_key_id(request.key_id)
        key = self._keys.get_public_key(request.key_id)
        # An unknown id is OK with no key: SPIRE turns that into its own NOT_FOUND, which ACME relies on.
        if key is None:
            return keymanager_pb2.GetPublicKeyResponse()
        return keymanager_pb2.GetPublicKeyResponse(public_key=_public_key(key))

    @_rpc
    def GetPublicKeys(
        self, request: keymanager_pb2.GetPublicKeysRequest, context: grpc.ServicerContext
    ) -> keymanager_pb2.GetPublicKeysResponse:
        return keymanager_pb2.GetPublicKeysResponse(
            public_keys=[_public_key(key) for key in self._keys.get_public_keys()]
        )

    @_rpc
    def SignData(
        self, request: keymanager_pb2.SignDataRequest, context: grpc.ServicerContext
    ) -> keymanager_pb2.SignDataResponse:
        _require_key_id(request.key_id)
        opts = request.WhichOneof("signer_opts")
        if opts is None:
            raise InvalidArgument("signer opts is required")
        if opts == "pss_options":
            hash_algorithm = request.pss_options.hash_algorithm
            salt_length: int | None = request.pss_options.salt_length
        else:
            hash_algorithm = request.hash_algorithm
            salt_length = None
        signature, key_fingerprint = self._keys.sign(
            request.key_id, request.data, hash_algorithm, salt_length
        )
        return keymanager_pb2.SignDataResponse(signature=signature, key_fingerprint=key_fingerprint)


def botocore_kms(config: plugin_config.Config, metrics: Metrics = NO_METRICS) -> Kms:
    # Imported here, not at module level: botocore takes a fifth of a second to import, and SPIRE is
    # waiting for the handshake line until the gRPC server is up.
    from plugin.kms import BotocoreKms, settings_for

    return BotocoreKms(settings_for(config), metrics)


@dataclass
class PluginServices:
    keys: KeyManager
    kms_factory: KmsFactory
    metrics: Relay = field(default_factory=Relay)
    host_services: HostServices = field(default_factory=HostServices)

    @classmethod
    def create(
        cls, kms_factory: KmsFactory | None = None, host_services: HostServices | None = None
    ) -> PluginServices:
        relay = Relay()
        if kms_factory is None:

            def kms_factory(config: plugin_config.Config) -> Kms:
                return botocore_kms(config, relay)

        return cls(
            keys=KeyManager(DeletionQueue(metrics=relay), metrics=relay),
            kms_factory=kms_factory,
            metrics=relay,
            host_services=host_services or HostServices(),
        )

    def register(self, server: MethodRegistry) -> None:
        # Bytes that are no request are refused INVALID_ARGUMENT before a servicer runs, not INTERNAL.
        tolerant = TolerantServer(server)
        init_pb2_grpc.add_InitServicer_to_server(
            InitService(self.use_host_services, self.stop_metrics), tolerant
        )
        config_pb2_grpc.add_ConfigServicer_to_server(ConfigService(self.keys, self.kms_factory), tolerant)
        keymanager_pb2_grpc.add_KeyManagerServicer_to_server(KeyManagerService(self.keys), tolerant)

    def use_host_services(self, names: list[str]) -> None:
        """Init: report to SPIRE's Metrics host service when SPIRE offers it; otherwise report nowhere."""
        if METRICS_SERVICE not in names or isinstance(self.metrics.target, HostMetrics):
            return
        host_services = self.host_services
        self.metrics.connect(HostMetrics(lambda: host_services.target(ADDRESS_WAIT_SECONDS)))
        # The state so far: reports made before SPIRE's Init went nowhere.
        self.keys.report_state()
        log.debug("Reporting metrics to SPIRE")

    def stop_metrics(self) -> None:
        target = self.metrics.target
        self.metrics.connect(NO_METRICS)
        if isinstance(target, HostMetrics):
            target.stop()

    def stop(self) -> None:
        self.keys.stop()
        self.stop_metrics()
