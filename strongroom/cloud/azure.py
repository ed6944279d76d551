"""Azure credentials from URI parameters for Blob storage and Key Vault.

``AUTH=specified`` (the default) takes ``AZURE_ACCOUNT_KEY`` (Blob only) or ``AZURE_CLIENT_ID``,
``AZURE_CLIENT_SECRET`` and ``AZURE_TENANT_ID``; ``AUTH=implicit`` uses the environment's identity.
``AZURE_ENVIRONMENT`` names the cloud (``AzurePublicCloud`` by default).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .scrub import register_secret

CLIENT_PARAMS = ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID")


@dataclass(frozen=True)
class AzureCloud:
    """One Azure cloud's DNS suffixes and Entra ID authority host, after the Azure SDKs' cloud lists."""

    blob_suffix: str
    vault_suffix: str
    authority_host: str


ENVIRONMENTS = {
    "AzurePublicCloud": AzureCloud("blob.core.windows.net", "vault.azure.net", "https://login.microsoftonline.com"),
    "AzureUSGovernmentCloud": AzureCloud(
        "blob.core.usgovcloudapi.net", "vault.usgovcloudapi.net", "https://login.microsoftonline.us"
    ),
    "AzureChinaCloud": AzureCloud("blob.core.chinacloudapi.cn", "vault.azure.cn", "https://login.chinacloudapi.cn"),
}


def azure_environment(params: dict[str, str]) -> AzureCloud:
    name = params.get("AZURE_ENVIRONMENT") or "AzurePublicCloud"
    if name not in ENVIRONMENTS:
        raise UsageError(f"unknown AZURE_ENVIRONMENT {name!r} (one of {', '.join(ENVIRONMENTS)})")
    return ENVIRONMENTS[name]


@dataclass(frozen=True)
class AzureAuth:
    """Checked Azure credentials: an account key, a client secret triple, or implicit (all empty)."""

    implicit: bool
    account_key: str = ""
    client_id: str = ""
    client_secret: str = ""
    tenant_id: str = ""

    @classmethod
    def from_params(cls, params: dict[str, str], *, account_key_allowed: bool) -> AzureAuth:
        auth = (params.get("AUTH") or "specified").lower()
        if auth not in ("specified", "explicit", "implicit"):
            raise UsageError(f"unsupported value {params.get('AUTH')} for AUTH")
        # Base64 never contains spaces: a space is a '+' the user did not URL-encode.
        key = params.get("AZURE_ACCOUNT_KEY", "").replace(" ", "+") if account_key_allowed else ""
        client = {p: params.get(p, "") for p in CLIENT_PARAMS}
        for secret in (key, client["AZURE_CLIENT_SECRET"]):
            register_secret(secret)
        made = cls(auth == "implicit", key, *client.values())
        if made.implicit:
            return made
        if not account_key_allowed:
            for name, val in client.items():
                if not val:
                    raise UsageError(f"AUTH is set to 'specified', but {name} is not set")
        elif key and any(client.values()):
            raise UsageError(
                "azure uri: give either AZURE_ACCOUNT_KEY or AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and "
                "AZURE_TENANT_ID, not both"
            )
        elif not key and not all(client.values()):
            raise UsageError(
                'azure uri missing "AZURE_ACCOUNT_KEY" parameter (or all of "AZURE_CLIENT_ID", '
                '"AZURE_CLIENT_SECRET", "AZURE_TENANT_ID")'
            )
        return made

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.account_key, self.client_secret) if s)
