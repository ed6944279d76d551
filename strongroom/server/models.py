"""The HTTP API's request and response bodies: CockroachDB Cloud's CMEK messages, as pydantic models.

Names and fields follow the Cloud API (``CMEKClusterSpecification``, ``CMEKClusterInfo``...), so a
client written for ``https://cockroachlabs.cloud/api/v1/clusters/{id}/cmek`` reads ours. Our
additions: the key types beyond AWS and GCP (Azure Key Vault, PKCS#11 HSMs, local key files).

A ``key_spec.uri`` is a Strongroom KMS URI (``aws:///...``, ``gs:///...``, ``local:///...``). As in
Cloud, AWS_KMS also takes a bare key ARN, used as ``aws:///<arn>?AUTH=implicit&REGION=<its region>``
(credentials from the server's environment), and GCP_CLOUD_KMS a bare key resource id
(``projects/.../cryptoKeys/<key>``), used as ``gs:///<id>?AUTH=implicit``.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UsageError
from ..store.keys import key_type
from ..uri import redact, redact_loose


class CMEKKeyType(StrEnum):
    AWS_KMS = "AWS_KMS"
    GCP_CLOUD_KMS = "GCP_CLOUD_KMS"
    AZURE_KEY_VAULT = "AZURE_KEY_VAULT"
    PKCS11_HSM = "PKCS11_HSM"
    HASHICORP_VAULT = "HASHICORP_VAULT"
    LOCAL_KEY_FILE = "LOCAL_KEY_FILE"
    NULL_KMS = "NULL_KMS"  # "no CMEK": refused, a store that used encryption cannot drop it


class CMEKStatus(StrEnum):
    DISABLED = "DISABLED"
    DISABLING = "DISABLING"
    DISABLE_FAILED = "DISABLE_FAILED"
    ENABLED = "ENABLED"
    ENABLING = "ENABLING"
    ENABLE_FAILED = "ENABLE_FAILED"
    ROTATING = "ROTATING"
    ROTATE_FAILED = "ROTATE_FAILED"
    REVOKED = "REVOKED"
    REVOKING = "REVOKING"
    REVOKE_FAILED = "REVOKE_FAILED"


class CMEKCustomerAction(StrEnum):
    REVOKE = "REVOKE"


class Request(BaseModel):
    """A request body: a field the API does not define is refused (400), never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class CMEKKeySpecification(Request):
    type: CMEKKeyType
    uri: str = Field(
        "",
        description="The key's KMS URI, redacted in responses. AWS_KMS also takes a key ARN, used as "
        "aws:///<arn>?AUTH=implicit&REGION=<its region>; GCP_CLOUD_KMS a key id projects/.../cryptoKeys/<key>, "
        "used as gs:///<id>?AUTH=implicit (credentials from the server's environment).",
    )
    auth_principal: str = Field("", description="Who the store acts as at the KMS (an IAM role, a service account)")


class CMEKRegionSpecification(Request):
    region: str
    key_spec: CMEKKeySpecification


class CMEKClusterSpecification(Request):
    region_specs: list[CMEKRegionSpecification]


class UpdateCMEKStatusRequest(Request):
    action: str = Field(description="REVOKE, the only action", json_schema_extra={"enum": ["REVOKE"]})


class CMEKKeyInfo(BaseModel):
    spec: CMEKKeySpecification
    status: CMEKStatus
    created_at: str | None
    updated_at: str
    user_message: str


class CMEKRegionInfo(BaseModel):
    region: str
    status: CMEKStatus
    key_infos: list[CMEKKeyInfo]


class CMEKClusterInfo(BaseModel):
    status: CMEKStatus
    region_infos: list[CMEKRegionInfo]


class ErrorBody(BaseModel):
    """Cloud's error shape (``Status``): the HTTP status, and a message meant for people."""

    code: int
    message: str


AWS_ARN_PREFIX = "arn:aws:kms:"
GCP_RESOURCE_PREFIX = "projects/"


def kms_uri(spec: CMEKKeySpecification) -> str:
    """The KMS URI the store uses for ``spec``; refuses a type that does not match the URI's KMS.

    NULL_KMS becomes "" (the store refuses it: CMEK cannot be dropped).
    """
    if spec.type == CMEKKeyType.NULL_KMS:
        return ""
    given = spec.uri.strip()
    if not given:
        raise UsageError(f"key_spec.uri is empty: a {spec.type} key needs one")
    if given.startswith(AWS_ARN_PREFIX):
        region = given.split(":")[3]
        if not region:
            raise UsageError(f"AWS key ARN {redact_loose(given)!r} names no region")
        uri = f"aws:///{given}?AUTH=implicit&REGION={region}"
    elif given.startswith(GCP_RESOURCE_PREFIX):
        uri = f"gs:///{given}?AUTH=implicit"
    else:
        uri = given
    actual = key_type(uri)
    if actual != spec.type:
        raise UsageError(f"key_spec.type is {spec.type} but {redact(given)!r} is a {actual} key")
    return uri
