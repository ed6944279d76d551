"""The one cloud layer below ``kms/`` and ``storage/``: credentials from URI parameters, SDK imports, scrubbing.

    aws.py     AUTH, access keys, region, endpoint and ASSUME_ROLE chains -> boto3 sessions (KMS, STS, S3)
    gcp.py     CREDENTIALS / BEARER_TOKEN / AUTH -> google-auth credentials, one policy on credential types
    azure.py   account key, client id/secret/tenant, AZURE_ENVIRONMENT -> Blob and Key Vault settings
    extras.py  importing an optional SDK, or a UsageError naming the ``pip install 'strongroom[...]'`` to run
    scrub.py   the one secret scrubber for every message that leaves the process

This package imports neither ``kms`` nor ``storage``; it depends only on ``uri.py`` and ``errors.py``.
"""
