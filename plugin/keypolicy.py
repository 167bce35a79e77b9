"""The key policy new keys get when no key_policy_file is given (built-in naming scheme), as SPIRE's
built-in aws_kms writes it, but right in every AWS partition. Pure: the caller ARN comes from STS.

If the plugin runs as an assumed role, that role gets every KMS permission on the key and the account
root may describe, list and read it (so the console can show it). Otherwise there is no policy to write
and KMS applies its own default policy.
"""

from __future__ import annotations

import json
import re

# arn:<partition>:sts::<account>:assumed-role/<role name>/<session name>
_ASSUMED_ROLE = re.compile(
    r"arn:(?P<partition>aws(?:-[a-z]+)*):sts::(?P<account>\d{12}):assumed-role/(?P<role>[\w+=,.@-]+)/.+"
)

NOT_A_ROLE_WARNING = (
    "The plugin does not run as an assumed IAM role, so new keys get KMS's default key policy. Run the "
    "SPIRE Server as an IAM role, or give a key_policy_file"
)


def role_arn(caller_arn: str) -> str | None:
    """The IAM role ARN behind an assumed-role session ARN, in the caller's partition; None when the
    caller is not an assumed role (an IAM user, the root user, a federated user)."""
    match = _ASSUMED_ROLE.fullmatch(caller_arn)
    if match is None:
        return None
    return f"arn:{match['partition']}:iam::{match['account']}:role/{match['role']}"


def default_key_policy(caller_arn: str) -> str | None:
    """The key policy for new keys, or None to let KMS apply its default one."""
    match = _ASSUMED_ROLE.fullmatch(caller_arn)
    if match is None:
        return None
    partition, account = match["partition"], match["account"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Allow full access to the SPIRE Server role",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition}:iam::{account}:role/{match['role']}"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "Allow KMS console to display the key and policy",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
                "Action": ["kms:Describe*", "kms:List*", "kms:Get*"],
                "Resource": "*",
            },
        ],
    }
    return json.dumps(policy, indent=2)
