"""CockroachDB's ENCRYPTION-INFO file: the plaintext protobuf that says how a backup's key is found.

CockroachDB's definition (pkg/jobs/jobspb/jobs.proto)::

    message EncryptionInfo {
      enum Scheme { AES256GCM = 0; }
      Scheme scheme = 1;
      bytes salt = 2;                                            // passphrase mode
      map<string, bytes> encryptedDataKeyByKMSMasterKeyID = 3;   // KMS mode
    }

The map's keys are raw SHA-256 digests, not UTF-8, which Python's protobuf refuses in a ``string``
field. So field 3 is declared here as ``repeated Entry { bytes key = 1; bytes value = 2; }``: the
same bytes on the wire. The descriptor is built at runtime, in a private pool.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from ..errors import EncryptionError, IntegrityError

SCHEME_AES256GCM = 0
_PACKAGE = "strongroom.crypto"


def _message_class() -> Any:
    """The EncryptionInfo message class, from a FileDescriptorProto written out field by field."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="strongroom/crypto/encryption_info.proto", package=_PACKAGE, syntax="proto3"
    )
    msg = fdp.message_type.add(name="EncryptionInfo")
    msg.enum_type.add(name="Scheme").value.add(name="AES256GCM", number=SCHEME_AES256GCM)
    entry = msg.nested_type.add(name="Entry")
    fd = descriptor_pb2.FieldDescriptorProto
    entry.field.add(name="key", number=1, type=fd.TYPE_BYTES, label=fd.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=fd.TYPE_BYTES, label=fd.LABEL_OPTIONAL)
    msg.field.add(
        name="scheme",
        number=1,
        type=fd.TYPE_ENUM,
        label=fd.LABEL_OPTIONAL,
        type_name=f".{_PACKAGE}.EncryptionInfo.Scheme",
    )
    msg.field.add(name="salt", number=2, type=fd.TYPE_BYTES, label=fd.LABEL_OPTIONAL)
    msg.field.add(
        name="encryptedDataKeyByKMSMasterKeyID",
        number=3,
        type=fd.TYPE_MESSAGE,
        label=fd.LABEL_REPEATED,
        type_name=f".{_PACKAGE}.EncryptionInfo.Entry",
    )
    pool = descriptor_pool.DescriptorPool()  # private: nothing else can clash with these names
    pool.AddSerializedFile(fdp.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.EncryptionInfo"))


_EncryptionInfoProto = _message_class()


def kms_identity(master_key_id: str) -> bytes:
    """The map key CockroachDB uses for a KMS: the raw SHA-256 of its master key id."""
    return hashlib.sha256(master_key_id.encode("utf-8")).digest()


@dataclass
class EncryptionInfo:
    """Passphrase mode sets ``salt``; KMS mode sets ``encrypted_data_keys`` (kms_identity → wrapped key)."""

    salt: bytes = b""
    encrypted_data_keys: dict[bytes, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        """Wire bytes; entries sorted by key so the same info always encodes the same way."""
        msg = _EncryptionInfoProto(salt=self.salt)  # scheme stays 0 (AES256GCM): omitted, as CockroachDB
        for key in sorted(self.encrypted_data_keys):
            msg.encryptedDataKeyByKMSMasterKeyID.add(key=key, value=self.encrypted_data_keys[key])
        return msg.SerializeToString(deterministic=True)

    @classmethod
    def decode(cls, data: bytes) -> EncryptionInfo:
        msg = _EncryptionInfoProto()
        try:
            msg.ParseFromString(data)
        except DecodeError:
            raise IntegrityError("malformed ENCRYPTION-INFO file") from None
        if msg.scheme != SCHEME_AES256GCM:
            # A scheme we do not know: guessing AES-256-GCM would only produce confusing failures later.
            raise EncryptionError(f"unsupported encryption scheme {msg.scheme} in ENCRYPTION-INFO")
        # Later entries win, as when Go decodes a map with a repeated key.
        keys = {entry.key: entry.value for entry in msg.encryptedDataKeyByKMSMasterKeyID}
        return cls(salt=msg.salt, encrypted_data_keys=keys)
