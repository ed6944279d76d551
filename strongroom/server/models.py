"""The HTTP API's request and response bodies: CockroachDB Cloud's messages, as pydantic models.

Names and fields follow the Cloud API (``CMEKClusterSpecification``, ``CMEKClusterInfo``, ``Status``,
``Cluster``...), so a client generated from Cloud's OpenAPI file works against ours unchanged: only
``region_specs`` (and ``action`` for PATCH) is required, ``key_spec.type`` may be left out (it is
inferred from the URI), and GET shows each key's ``uri`` exactly as the client sent it (credentials
redacted), so a client that finds its key by URI finds it.

A ``key_spec.uri`` is a Strongroom KMS URI (``aws:///...``, ``gs:///...``, ``azure-kms:///...``). As
in Cloud, AWS_KMS also takes a bare key ARN, used as ``aws:///<arn>?AUTH=implicit&REGION=<its
region>`` (credentials from the server's environment), and GCP_CLOUD_KMS a bare key resource id
(``projects/.../cryptoKeys/<key>``), used as ``gs:///<id>?AUTH=implicit``.

**Our additions** (outside Cloud's ``CMEKKeyType``; a strict generated client rejects them, so only a
store that uses them ever answers with them): ``PKCS11_HSM`` (a ``pkcs11:`` URI, RFC 7512) and
``LOCAL_KEY_FILE`` (a ``local:///`` key file). A region without CMEK is ``DISABLED`` with no key in
``key_infos``: the local key file that wraps its store key is not a customer key.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UsageError
from ..store.keys import CMEKSpec, key_type
from ..uri import redact, redact_loose

#: CockroachDB Cloud's ``CMEKKeyType`` values, and ours beyond them (see the module docstring).
OFFICIAL_KEY_TYPES = ("AWS_KMS", "GCP_CLOUD_KMS", "NULL_KMS", "AZURE_KEY_VAULT")
OUR_KEY_TYPES = ("PKCS11_HSM", "HASHICORP_VAULT", "LOCAL_KEY_FILE")


class CMEKKeyType(StrEnum):
    AWS_KMS = "AWS_KMS"
    GCP_CLOUD_KMS = "GCP_CLOUD_KMS"
    AZURE_KEY_VAULT = "AZURE_KEY_VAULT"
    NULL_KMS = "NULL_KMS"  # "no CMEK": refused, a store that used encryption cannot drop it
    PKCS11_HSM = "PKCS11_HSM"  # ours
    HASHICORP_VAULT = "HASHICORP_VAULT"  # ours
    LOCAL_KEY_FILE = "LOCAL_KEY_FILE"  # ours


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
    type: CMEKKeyType | None = Field(default=None, description="Inferred from the URI when left out")
    uri: str = Field(
        default="",
        description="The key's URI, shown back exactly as given (credentials redacted). AWS_KMS also takes a "
        "key ARN, used as aws:///<arn>?AUTH=implicit&REGION=<its region>; GCP_CLOUD_KMS a key id "
        "projects/.../cryptoKeys/<key>, used as gs:///<id>?AUTH=implicit (credentials from the server's "
        "environment).",
    )
    auth_principal: str = Field(
        default="", description="Who the store acts as at the KMS (an IAM role, a service account)"
    )


class CMEKRegionSpecification(Request):
    region: str = ""
    key_spec: CMEKKeySpecification = Field(default_factory=lambda: CMEKKeySpecification())


class CMEKClusterSpecification(Request):
    region_specs: list[CMEKRegionSpecification]


class UpdateCMEKStatusRequest(Request):
    action: str = Field(description="REVOKE, the only action", json_schema_extra={"enum": ["REVOKE"]})


class CMEKKeySpecificationInfo(BaseModel):
    """A key's spec as GET shows it: its type always named."""

    type: CMEKKeyType
    uri: str
    auth_principal: str


class CMEKKeyInfo(BaseModel):
    spec: CMEKKeySpecificationInfo
    status: CMEKStatus
    created_at: str
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
    """Cloud's error shape (``Status``): the HTTP status, a message meant for people, and details
    (protobuf ``Any`` messages in Cloud; we have none to add)."""

    code: int
    message: str
    details: list[dict[str, object]] = Field(default_factory=list)


# -- the cluster, as far as a store is one ------------------------------------------------------------


class ClusterState(StrEnum):
    CREATED = "CREATED"
    LOCKED = "LOCKED"  # Cloud: an exclusive operation is being performed (ours: a CMEK change)


class ClusterOperationStatus(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    CRDB_CMEK_OPERATION_RUNNING = "CRDB_CMEK_OPERATION_RUNNING"
    CRDB_CMEK_OPERATION_FAILED = "CRDB_CMEK_OPERATION_FAILED"


class ClusterRegion(BaseModel):
    """Cloud's ``Region``: a store region has a name and no CockroachDB nodes or DNS names."""

    name: str
    sql_dns: str = ""
    ui_dns: str = ""
    internal_dns: str = ""
    private_endpoint_dns: str = ""
    node_count: int = 0


class ClusterConfig(BaseModel):
    """Neither of Cloud's configurations (dedicated hardware, serverless) describes a store."""


class Cluster(BaseModel):
    """Cloud's ``Cluster`` with what a store can say truthfully.

    Left out although Cloud marks them required: ``plan``, ``cloud_provider`` and ``upgrade_status``,
    enums none of whose values is true of a store (it has no Cloud plan, runs wherever it is
    installed, and is not a CockroachDB version). Strings a store has no value for are empty.
    """

    id: str
    name: str
    state: ClusterState
    operation_status: ClusterOperationStatus
    regions: list[ClusterRegion]
    created_at: str | None = None
    cockroach_version: str = Field(default="", description="Empty: a store is not a CockroachDB cluster")
    creator_id: str = ""
    cidr_range: str = ""
    config: ClusterConfig = Field(default_factory=ClusterConfig)
    labels: dict[str, str] = Field(default_factory=dict)
    is_customer_cloud_account: bool = Field(
        default=False, description="False: the store runs where it is installed, in no cloud account Cloud manages"
    )


AWS_ARN_PREFIX = "arn:aws:kms:"
GCP_RESOURCE_PREFIX = "projects/"


def kms_uri(spec: CMEKKeySpecification) -> str:
    """The KMS URI the store uses for ``spec``; refuses a type that does not match the URI's KMS.

    NULL_KMS becomes "" (the store refuses it: CMEK cannot be dropped). Without a type, the URI's
    own is taken.
    """
    if spec.type == CMEKKeyType.NULL_KMS:
        return ""
    given = spec.uri.strip()
    if not given:
        raise UsageError(f"key_spec.uri is empty: a {spec.type or 'CMEK'} key needs one")
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
    if spec.type is not None and actual != spec.type:
        raise UsageError(f"key_spec.type is {spec.type} but {redact(given)!r} is a {actual} key")
    return uri


def cmek_spec(spec: CMEKKeySpecification) -> CMEKSpec:
    """``spec`` as the store takes it: the KMS URI, the URI as given, the principal ("" = none)."""
    uri = kms_uri(spec)
    given = spec.uri.strip()
    return CMEKSpec(uri, "" if given == uri else given, spec.auth_principal or None)
