"""Privacy building blocks: clipping, DP accounting, SecAgg+ settings, encryption, signing.

Imports no other Stamen package and never ``flwr``.
"""

from stamen.privacy.accountant import (
    ACCOUNTANTS,
    DPSettings,
    PrivacyAccountant,
    noise_for_target,
)
from stamen.privacy.clipping import check_update, clip_update, update_norm
from stamen.privacy.dp import UserDP, gaussian_noise, noise_share_std, secagg_range_for
from stamen.privacy.encryption import (
    decrypt,
    decrypt_file,
    encrypt,
    encrypt_file,
    generate_key,
)
from stamen.privacy.errors import (
    BudgetExceededError,
    DecryptionError,
    PrivacyError,
    SignatureError,
)
from stamen.privacy.record_dp import RecordDP, record_epsilon
from stamen.privacy.secagg import SecAggSettings
from stamen.privacy.signing import (
    generate_signing_key,
    release_digest,
    sign_arrays,
    sign_release,
    verify_arrays,
    verify_release,
)

__all__ = [
    "ACCOUNTANTS",
    "BudgetExceededError",
    "DPSettings",
    "DecryptionError",
    "PrivacyAccountant",
    "PrivacyError",
    "RecordDP",
    "SecAggSettings",
    "SignatureError",
    "UserDP",
    "check_update",
    "clip_update",
    "decrypt",
    "decrypt_file",
    "encrypt",
    "encrypt_file",
    "gaussian_noise",
    "generate_key",
    "generate_signing_key",
    "noise_for_target",
    "noise_share_std",
    "record_epsilon",
    "release_digest",
    "secagg_range_for",
    "sign_arrays",
    "sign_release",
    "update_norm",
    "verify_arrays",
    "verify_release",
]
