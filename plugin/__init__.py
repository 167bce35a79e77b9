"""SPIRE Server KeyManager plugin that keeps its keys in AWS KMS."""

__version__ = "0.1.0"
PLUGIN_NAME = "aws-kms-keymanager"
