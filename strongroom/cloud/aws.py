"""AWS credentials from URI parameters, as CockroachDB reads them, for every AWS client we build.

``AUTH`` is ``specified`` (the default: ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``, optionally
``AWS_SESSION_TOKEN``, from the URI) or ``implicit`` (boto3's default chain: environment, profile, instance
metadata). ``ASSUME_ROLE`` is a comma-separated chain ``delegate1,...,target``, each ``arn[;external_id=<id>]``,
assumed in order through STS, each hop signed with the previous hop's temporary credentials.

boto3 is imported on first use, so ``import strongroom`` works without the ``[aws]`` extra.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from .extras import import_extra
from .scrub import register_secret

AUTH_SPECIFIED, AUTH_IMPLICIT = "specified", "implicit"
CREDENTIAL_PARAMS = ("AUTH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "ASSUME_ROLE")


@dataclass(frozen=True)
class AssumedRole:
    """One hop of an ASSUME_ROLE chain."""

    arn: str
    external_id: str | None = None


def parse_role_chain(value: str) -> tuple[AssumedRole, ...]:
    """``ASSUME_ROLE`` as roles, delegates first and the target role last."""
    chain: list[AssumedRole] = []
    for entry in value.split(","):
        arn, *opts = (p.strip() for p in entry.split(";"))
        external_id = None
        for opt in opts:
            name, sep, val = opt.partition("=")
            if not sep or name != "external_id":
                raise UsageError(f"unknown ASSUME_ROLE option {name!r} (only external_id=<id> is supported)")
            external_id = val
        if not arn:
            raise UsageError("ASSUME_ROLE has an empty role ARN")
        chain.append(AssumedRole(arn, external_id))
    return tuple(chain)


def boto3_module(what: str) -> Any:
    return import_extra("boto3", "aws", what)


@dataclass(frozen=True)
class AwsAuth:
    """Who we are to AWS: the URI's keys (or the environment's) and the roles to assume with them."""

    auth: str
    region: str
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str | None = None
    roles: tuple[AssumedRole, ...] = ()

    @classmethod
    def from_params(cls, params: dict[str, str], region: str) -> AwsAuth:
        auth = params.get("AUTH", "") or AUTH_SPECIFIED
        # Query decoding turns '+' into ' '; AWS secrets often contain '+', so turn it back (as CockroachDB does).
        secret = params.get("AWS_SECRET_ACCESS_KEY", "").replace(" ", "+")
        access_key = params.get("AWS_ACCESS_KEY_ID", "")
        if auth == AUTH_SPECIFIED:
            for name, val in (("AWS_ACCESS_KEY_ID", access_key), ("AWS_SECRET_ACCESS_KEY", secret)):
                if not val:
                    raise UsageError(f"AUTH is set to '{AUTH_SPECIFIED}', but {name} is not set")
        elif auth != AUTH_IMPLICIT:
            raise UsageError(f"unsupported value {auth} for AUTH")
        token = params.get("AWS_SESSION_TOKEN") or None
        for value in (secret, token or ""):
            register_secret(value)
        roles = parse_role_chain(params["ASSUME_ROLE"]) if params.get("ASSUME_ROLE") else ()
        return cls(auth, region, access_key, secret, token, roles)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.secret_access_key, self.session_token) if s)

    def base_session(self, what: str) -> Any:
        """A boto3 session with the URI's keys, or boto3's default chain under AUTH=implicit."""
        boto3 = boto3_module(what)
        if self.auth == AUTH_SPECIFIED:
            return boto3.session.Session(
                aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                aws_session_token=self.session_token,
                region_name=self.region,
            )
        return boto3.session.Session(region_name=self.region)

    def session(
        self, what: str, *, sts_endpoint: str | None = None, config: Any = None
    ) -> tuple[Any, dt.datetime | None]:
        """The session to use (after the ASSUME_ROLE chain) and when its temporary credentials expire.

        STS errors are botocore's own; callers turn them into their error type.
        """
        session = self.base_session(what)
        expires: dt.datetime | None = None
        boto3 = boto3_module(what)
        for role in self.roles:
            sts = session.client("sts", region_name=self.region, endpoint_url=sts_endpoint, config=config)
            args: dict[str, Any] = {"RoleArn": role.arn, "RoleSessionName": f"strongroom-{uuid.uuid4().hex[:12]}"}
            if role.external_id:
                args["ExternalId"] = role.external_id
            creds = sts.assume_role(**args)["Credentials"]
            register_secret(creds["SecretAccessKey"])
            register_secret(creds["SessionToken"])
            expires = creds["Expiration"].astimezone(dt.UTC)  # boto3 gives tzutc(); obstore insists on datetime.UTC
            session = boto3.session.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
                region_name=self.region,
            )
        return session, expires
