"""The KMS client a command uses: the one the plugin would build from the same configuration."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from plugin.config import Config

if TYPE_CHECKING:
    from plugin.kms import BotocoreKms


def connect(config: Config, assume_role: bool = True) -> BotocoreKms:
    """KMS (and STS, the tagging API) with the configuration's credentials, endpoint and failure policy;
    without `assume_role`, as the identity the role would be assumed from."""
    # Imported here, as the plugin does: boto3 takes a quarter of a second to load, which a command whose
    # configuration is refused need not wait for.
    from plugin.kms import BotocoreKms, settings_for

    settings = settings_for(config)
    if not assume_role:
        settings = dataclasses.replace(settings, assume_role=None)
    return BotocoreKms(settings)
