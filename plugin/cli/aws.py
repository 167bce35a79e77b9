"""The KMS client a command uses: the one the plugin would build from the same configuration."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from plugin.config import Config

if TYPE_CHECKING:
    from plugin.kms import Boto3Kms


def connect(config: Config, assume_role: bool = True) -> Boto3Kms:
    """KMS (and STS, the tagging API) with the configuration's credentials, endpoint and failure policy;
    without `assume_role`, as the identity the role would be assumed from."""
    # Imported here, as the plugin does: boto3 takes a quarter of a second to load, which a command whose
    # configuration is refused need not wait for.
    from plugin.awsclient import AssumeRole, ClientSettings
    from plugin.kms import Boto3Kms

    credentials = config.credentials
    role = config.assume_role
    settings = ClientSettings(
        region=config.region,
        access_key_id=credentials.access_key_id if credentials else None,
        secret_access_key=credentials.secret_access_key if credentials else None,
        endpoint=config.endpoint,
        use_fips_endpoint=config.use_fips_endpoint,
        assume_role=AssumeRole(role.role_arn, role.external_id, role.session_name) if role else None,
    )
    if not assume_role:
        settings = dataclasses.replace(settings, assume_role=None)
    return Boto3Kms(settings)
