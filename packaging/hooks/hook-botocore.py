"""Override of pyinstaller-hooks-contrib's hook-botocore (hooks in build.spec's hookspath take precedence).

The contrib hook collects all of botocore's data: ~2,000 service models, unpacked at every start of the
one-file binary. The plugin only creates `kms`, `sts` and `resourcegroupstaggingapi` (tag-based key
discovery) clients; botocore's default credential chain creates `sts` (web identity, assume role), `sso`
(SSO profiles), `sso-oidc` (SSO token refresh) and `signin` (`aws login` profiles). Everything else is
dropped, and so are the `examples-1.json` files (documentation).

The build fails when a file listed here is missing, so a botocore upgrade that moves one is noticed at build
time and not at the first KMS call in production.
"""

from __future__ import annotations

import os

from PyInstaller.utils.hooks import collect_data_files, get_package_paths

# botocore's own files (relative to the package) that the runtime needs.
KEEP_FILES = {
    "cacert.pem",  # CA bundle for HTTPS to AWS (botocore's default; certifi is not bundled)
    "data/endpoints.json",
    "data/partitions.json",
    "data/sdk-default-configuration.json",
    "data/_retry.json",
}
# Services whose models (service-2, endpoint-rule-set-1, paginators-1, ...) are kept.
KEEP_SERVICES = {"kms", "sts", "resourcegroupstaggingapi", "sso", "sso-oidc", "signin"}
DROP_NAMES = {"examples-1.json"}

hiddenimports = ["html.parser"]  # same as the contrib hook: botocore parses some XML error bodies with it

_, _pkg_dir = get_package_paths("botocore")


def _keep(rel: str) -> bool:
    if rel in KEEP_FILES:
        return True
    parts = rel.split("/")
    return len(parts) == 4 and parts[0] == "data" and parts[1] in KEEP_SERVICES and parts[3] not in DROP_NAMES


datas = []
_kept_rel = set()
for _src, _dest in collect_data_files("botocore"):
    _rel = os.path.relpath(_src, _pkg_dir).replace(os.sep, "/")
    if _keep(_rel):
        datas.append((_src, _dest))
        _kept_rel.add(_rel)

_missing = sorted(KEEP_FILES - _kept_rel)
for _service in sorted(KEEP_SERVICES):
    if not any(r.startswith(f"data/{_service}/") and "/service-2.json" in r for r in _kept_rel):
        _missing.append(f"data/{_service}/*/service-2.json*")
if _missing:
    raise SystemExit(
        f"hook-botocore: botocore no longer ships {_missing}; update packaging/hooks/hook-botocore.py"
    )
