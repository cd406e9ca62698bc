"""Privacy building blocks: clipping, DP accounting, SecAgg+ settings, encryption at rest
(AES-GCM blobs and SQLCipher databases), signing.

Imports no other Stamen package (only the root module ``stamen.errors``) and never ``flwr``.
The DP names (they import Opacus) and the SecAgg+ settings load on first use, so a device
that only stores and verifies pays nothing for them.
"""

from stamen import lazy_attributes
from stamen.errors import (
    BudgetExceededError,
    DecryptionError,
    PrivacyError,
    SignatureError,
    UpdateBoundError,
)
from stamen.privacy.crypto.database import DatabaseError, open_encrypted_database
from stamen.privacy.crypto.encryption import (
    decrypt,
    decrypt_file,
    derive_key,
    encrypt,
    encrypt_file,
    generate_key,
    write_atomically,
    write_staged,
)
from stamen.privacy.crypto.signing import (
    SIGNED_MAGIC,
    generate_signing_key,
    open_signed,
    open_signed_with_sha256,
    release_digest,
    seal_signed,
    sign_arrays,
    sign_release,
    signed_payload,
    verify_arrays,
    verify_release,
)
from stamen.privacy.dp.clipping import check_update, clip_update, update_norm
from stamen.privacy.dp.streams import Purpose, Streams

#: Names loaded on first use (``__getattr__``), by module.
_LAZY = {
    "stamen.privacy.dp.accountant": (
        "ACCOUNTANTS",
        "DPSettings",
        "PrivacyAccountant",
        "noise_for_target",
    ),
    "stamen.privacy.dp.user": ("UserDP", "gaussian_noise", "noise_share_std", "secagg_range_for"),
    "stamen.privacy.dp.gaussian": (
        "MECHANISMS",
        "CentralGaussianSum",
        "DistributedGaussianSum",
        "GaussianSum",
    ),
    "stamen.privacy.dp.record": ("RecordDP", "record_epsilon"),
    "stamen.privacy.crypto.secagg": (
        "MAX_WEIGHT",
        "MODULUS_RANGE",
        "NOISE_TAIL",
        "UNCLIPPED_RANGE",
        "WIDE_RANGE_FACTOR",
        "SecAggSettings",
        "honest_sum_bound",
        "malicious_influence_bound",
    ),
}
__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "ACCOUNTANTS",
    "BudgetExceededError",
    "CentralGaussianSum",
    "DPSettings",
    "DatabaseError",
    "DecryptionError",
    "DistributedGaussianSum",
    "GaussianSum",
    "MAX_WEIGHT",
    "MECHANISMS",
    "MODULUS_RANGE",
    "NOISE_TAIL",
    "PrivacyAccountant",
    "PrivacyError",
    "Purpose",
    "RecordDP",
    "SIGNED_MAGIC",
    "SecAggSettings",
    "SignatureError",
    "Streams",
    "UNCLIPPED_RANGE",
    "UpdateBoundError",
    "UserDP",
    "WIDE_RANGE_FACTOR",
    "check_update",
    "clip_update",
    "decrypt",
    "decrypt_file",
    "derive_key",
    "encrypt",
    "encrypt_file",
    "gaussian_noise",
    "generate_key",
    "generate_signing_key",
    "honest_sum_bound",
    "malicious_influence_bound",
    "noise_for_target",
    "noise_share_std",
    "open_encrypted_database",
    "open_signed",
    "open_signed_with_sha256",
    "record_epsilon",
    "release_digest",
    "seal_signed",
    "secagg_range_for",
    "sign_arrays",
    "sign_release",
    "signed_payload",
    "update_norm",
    "verify_arrays",
    "verify_release",
    "write_atomically",
    "write_staged",
]
