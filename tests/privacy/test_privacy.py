"""Privacy building blocks: clipping bounds, DP accounting against Opacus, encryption, signing."""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from opacus.accountants import PRVAccountant, RDPAccountant
from pydantic import ValidationError

from stamen.privacy import (
    ACCOUNTANTS,
    BudgetExceededError,
    DecryptionError,
    DPSettings,
    PrivacyAccountant,
    PrivacyError,
    SignatureError,
    check_update,
    clip_update,
    decrypt,
    decrypt_file,
    encrypt,
    encrypt_file,
    generate_key,
    generate_signing_key,
    noise_for_target,
    open_signed,
    open_signed_with_sha256,
    release_digest,
    seal_signed,
    sign_arrays,
    sign_release,
    update_norm,
    verify_arrays,
    verify_release,
)

# ---------------------------------------------------------------- clipping


def _update_strategy() -> st.SearchStrategy[list[np.ndarray]]:
    def arrays(dtype: np.dtype) -> st.SearchStrategy[np.ndarray]:
        width = np.finfo(dtype).bits
        return hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=0, max_dims=3, max_side=6),
            elements=st.floats(-1e4, 1e4, width=width),
        )

    dtypes = st.sampled_from([np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)])
    return st.lists(dtypes.flatmap(arrays), min_size=1, max_size=4)


def _slow_norm(arrays: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(x) ** 2 for a in arrays for x in np.asarray(a).ravel()))


@settings(max_examples=200, deadline=None)
@given(update=_update_strategy(), max_norm=st.floats(1e-3, 1e3))
def test_clipped_norm_never_exceeds_bound(update: list[np.ndarray], max_norm: float) -> None:
    clipped, norm = clip_update(update, max_norm=max_norm)
    assert norm == pytest.approx(_slow_norm(update), rel=1e-12, abs=1e-300)
    assert norm == update_norm(update)
    assert update_norm(clipped) <= max_norm
    assert [c.dtype for c in clipped] == [a.dtype for a in update]
    assert [c.shape for c in clipped] == [a.shape for a in update]
    if norm <= max_norm:
        for c, a in zip(clipped, update, strict=True):
            np.testing.assert_array_equal(c, a)
            assert not np.shares_memory(c, a)
    else:
        # Scaled down to (nearly) the bound, direction preserved.
        rtol = 1e-2 if any(a.dtype == np.float16 for a in update) else 1e-5
        assert update_norm(clipped) == pytest.approx(max_norm, rel=rtol)


def test_clip_scales_by_the_bound_over_the_norm() -> None:
    update = [np.array([3.0, 0.0], np.float32), np.array([[4.0]], np.float32)]
    clipped, norm = clip_update(update, max_norm=1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped[0], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped[1], [[0.8]], rtol=1e-6)


def test_clip_rejects_bad_bounds_and_non_finite_updates() -> None:
    with pytest.raises(ValueError, match="max_norm"):
        clip_update([np.ones(2)], max_norm=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        clip_update([np.array([1.0, np.nan])], max_norm=1.0)
    with pytest.raises(TypeError, match="dtype"):
        clip_update([np.ones(2, np.int64)], max_norm=1.0)


def test_check_update_accepts_a_good_update_and_returns_its_norm() -> None:
    update = [np.array([3.0, 0.0], np.float32), np.array([[4.0]], np.float32)]
    assert check_update(update, expected_shapes=[(2,), (1, 1)], bound=5.0) == 5.0


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ([np.array([1.0, np.nan]), np.zeros((1, 1))], "array 0 holds non-finite"),
        ([np.zeros(2), np.array([[np.inf]])], "array 1 holds non-finite"),
        ([np.zeros(2), np.array([[-np.inf]])], "array 1 holds non-finite"),
        ([np.zeros(3), np.zeros((1, 1))], r"array 0 has shape \(3,\), expected \(2,\)"),
        ([np.zeros(2), np.zeros(1)], r"array 1 has shape \(1,\)"),
        ([np.zeros(2)], "update has 1 arrays, expected 2"),
        ([np.array([3.0, 0.0]), np.array([[4.1]])], "exceeds the bound"),
        ([np.array(["a", "b"]), np.zeros((1, 1))], "non-real dtype"),
    ],
)
def test_check_update_rejects_malformed_updates(update: list[np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_update(update, expected_shapes=[(2,), (1, 1)], bound=5.0)


# ---------------------------------------------------------------- accounting


def _opacus_epsilon(z: float, q: float, steps: int, delta: float, name: str = "rdp") -> float:
    accountant = RDPAccountant() if name == "rdp" else PRVAccountant()
    accountant.history = [(z, q, steps)]
    return accountant.get_epsilon(delta=delta)


def test_flower_notes_example() -> None:
    dp = DPSettings(noise_multiplier=1.0, sampling_rate=0.01, delta=1e-5)
    accountant = PrivacyAccountant(dp)
    accountant.step(500)
    assert accountant.epsilon == pytest.approx(1.65, abs=0.01)


@pytest.mark.parametrize(
    ("z", "q", "steps", "delta"),
    [(1.0, 0.01, 500, 1e-5), (0.7, 0.05, 37, 1e-6), (2.5, 1.0, 10, 1e-3), (1.1, 0.2, 1, 1e-5)],
)
def test_epsilon_equals_opacus_rdp_accountant(z: float, q: float, steps: int, delta: float) -> None:
    dp = DPSettings(noise_multiplier=z, sampling_rate=q, delta=delta)
    accountant = PrivacyAccountant(dp)
    for _ in range(steps // 2):
        accountant.step()
    accountant.step(n=steps - steps // 2)
    assert accountant.rounds == steps
    assert accountant.epsilon == _opacus_epsilon(z, q, steps, delta)
    # The same figure as Opacus' own per-step bookkeeping.
    reference = RDPAccountant()
    for _ in range(steps):
        reference.step(noise_multiplier=z, sample_rate=q)
    assert accountant.epsilon == pytest.approx(reference.get_epsilon(delta=delta), rel=1e-12)


def test_prv_accountant_is_registered_and_matches_opacus() -> None:
    assert set(ACCOUNTANTS) == {"prv", "rdp"}
    dp = DPSettings(noise_multiplier=1.0, sampling_rate=0.01, accountant="prv")
    accountant = PrivacyAccountant(dp, rounds=500)
    assert accountant.epsilon == _opacus_epsilon(1.0, 0.01, 500, 1e-5, "prv")
    assert (
        accountant.epsilon
        < PrivacyAccountant(dp.model_copy(update={"accountant": "rdp"}), rounds=500).epsilon
    )


def test_no_rounds_spend_nothing_and_no_noise_spends_everything() -> None:
    assert PrivacyAccountant(DPSettings()).epsilon == 0.0
    no_noise = PrivacyAccountant(DPSettings(noise_multiplier=0.0), rounds=1)
    assert no_noise.epsilon == math.inf
    assert no_noise.rounds_within(100.0) == 0
    assert no_noise.would_exceed(100.0, rounds=0)


def test_noise_for_target_round_trips() -> None:
    z = noise_for_target(target_epsilon=8.0, delta=1e-5, sampling_rate=0.01, rounds=500)
    assert z == pytest.approx(0.573, abs=1e-3)  # FLOWER-NOTES
    epsilon = _opacus_epsilon(z, 0.01, 500, 1e-5)
    assert 8.0 - 0.01 <= epsilon <= 8.0
    dp = DPSettings(noise_multiplier=z, sampling_rate=0.01, target_epsilon=8.0)
    accountant = PrivacyAccountant(dp, rounds=500)
    assert accountant.epsilon <= 8.0 and not accountant.would_exceed(rounds=0)


def test_a_bound_at_an_edge_order_is_kept_without_opacus_warning() -> None:
    """Much noise over few rounds puts the optimal Rényi order at Opacus' largest (its
    noise search starts there too): ε is still an upper bound (the same value), and the
    console shows no warning."""
    with pytest.warns(UserWarning, match="Optimal order is the largest alpha"):
        expected = _opacus_epsilon(20.0, 0.5, 2, 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = noise_for_target(target_epsilon=8.0, delta=1e-3, sampling_rate=0.5, rounds=2)
        dp = DPSettings(noise_multiplier=20.0, sampling_rate=0.5, delta=1e-3)
        assert PrivacyAccountant(dp, rounds=2).epsilon == pytest.approx(expected, rel=1e-12)
    assert 8.0 - 0.01 <= _opacus_epsilon(z, 0.5, 2, 1e-3) <= 8.0
    # little noise over many rounds puts it at the smallest order: silenced alike
    with pytest.warns(UserWarning, match="Optimal order is the smallest alpha"):
        _opacus_epsilon(0.3, 1.0, 1000, 1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            PrivacyAccountant(
                DPSettings(noise_multiplier=0.3, sampling_rate=1.0), rounds=1000
            ).epsilon
            > 0
        )


@pytest.mark.parametrize("target", [1.0, 1.65, 3.0])
def test_rounds_within_is_the_largest_count_within_budget(target: float) -> None:
    accountant = PrivacyAccountant(DPSettings(noise_multiplier=1.0, sampling_rate=0.01))
    rounds = accountant.rounds_within(target)
    assert rounds > 0
    assert _opacus_epsilon(1.0, 0.01, rounds, 1e-5) <= target
    assert _opacus_epsilon(1.0, 0.01, rounds + 1, 1e-5) > target
    accountant.step(rounds)
    assert not accountant.would_exceed(target, rounds=0)
    assert accountant.would_exceed(target)


def test_rounds_within_is_zero_when_one_round_overspends() -> None:
    # RDP's conversion to (epsilon, delta) costs about 0.95 at delta = 1e-5 for one round.
    accountant = PrivacyAccountant(DPSettings(noise_multiplier=1.0, sampling_rate=0.01))
    assert accountant.rounds_within(0.5) == 0
    assert _opacus_epsilon(1.0, 0.01, 1, 1e-5) > 0.5


def test_step_refuses_to_overspend_the_target() -> None:
    dp = DPSettings(noise_multiplier=1.0, sampling_rate=0.01, target_epsilon=1.65)
    accountant = PrivacyAccountant(dp)
    budget = accountant.rounds_within()
    accountant.step(budget)
    with pytest.raises(BudgetExceededError, match="target 1.65") as err:
        accountant.step()
    assert isinstance(err.value, PrivacyError)
    assert accountant.rounds == budget  # nothing recorded
    with pytest.raises(ValueError, match="no target_epsilon"):
        PrivacyAccountant(DPSettings()).rounds_within()


def test_report_names_every_figure() -> None:
    dp = DPSettings(noise_multiplier=1.2, clip_norm=0.5, sampling_rate=0.02, delta=1e-6)
    accountant = PrivacyAccountant(dp, rounds=40)
    report = accountant.report()
    assert set(report) == {
        "epsilon",
        "delta",
        "noise_multiplier",
        "clip_norm",
        "sampling_rate",
        "rounds",
        "target_epsilon",
        "accountant",
    }
    assert report["epsilon"] == _opacus_epsilon(1.2, 0.02, 40, 1e-6)
    assert (report["delta"], report["noise_multiplier"], report["clip_norm"]) == (1e-6, 1.2, 0.5)
    assert (report["sampling_rate"], report["rounds"], report["accountant"]) == (0.02, 40, "rdp")


@pytest.mark.parametrize(
    "bad",
    [
        {"noise_multiplier": -0.1},
        {"clip_norm": 0.0},
        {"sampling_rate": 0.0},
        {"sampling_rate": 1.5},
        {"delta": 1.0},
        {"delta": 0.0},
        {"target_epsilon": 0.0},
        {"accountant": "moments"},
        {"unknown": 1},
    ],
)
def test_dp_settings_reject_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=next(iter(bad))):
        DPSettings(**bad)


def test_dp_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        DPSettings().noise_multiplier = 0.0  # type: ignore[misc]


# ---------------------------------------------------------------- encryption


def test_encryption_round_trip_with_fresh_nonces() -> None:
    key = generate_key()
    assert len(key) == 32 and generate_key() != key
    first = encrypt(b"user 7 liked items 3, 9", key=key, associated_data=b"store")
    second = encrypt(b"user 7 liked items 3, 9", key=key, associated_data=b"store")
    assert first != second and first[0] == 1
    assert b"liked" not in first
    assert decrypt(first, key=key, associated_data=b"store") == b"user 7 liked items 3, 9"
    assert decrypt(encrypt(b"", key=key), key=key) == b""


def test_wrong_key_raises_decryption_error() -> None:
    blob = encrypt(b"secret", key=generate_key())
    with pytest.raises(DecryptionError, match="wrong key"):
        decrypt(blob, key=generate_key())


def test_wrong_associated_data_raises_decryption_error() -> None:
    key = generate_key()
    with pytest.raises(DecryptionError):
        decrypt(encrypt(b"secret", key=key, associated_data=b"a"), key=key, associated_data=b"b")


@pytest.mark.parametrize("position", [1, 5, 13, 14, -1])
def test_tampered_ciphertext_raises_decryption_error(position: int) -> None:
    key = generate_key()
    blob = bytearray(encrypt(b"secret data", key=key))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionError, match="tampered"):
        decrypt(bytes(blob), key=key)


@pytest.mark.parametrize("keep", [0, 1, 12, 28, 29, 39])
def test_truncated_blob_raises_decryption_error(keep: int) -> None:
    key = generate_key()
    blob = encrypt(b"secret data", key=key)  # 1 + 12 + 11 + 16 = 40 bytes
    with pytest.raises(DecryptionError, match="truncated"):
        decrypt(blob[:keep], key=key)


def test_unknown_version_raises_decryption_error() -> None:
    key = generate_key()
    blob = encrypt(b"secret", key=key)
    with pytest.raises(DecryptionError, match="unknown encryption format version 2"):
        decrypt(b"\x02" + blob[1:], key=key)


def test_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        encrypt(b"x", key=b"short")


def test_encrypted_file_round_trip_is_atomic(tmp_path) -> None:
    key = generate_key()
    path = tmp_path / "store.bin"
    encrypt_file(path, b"first", key=key)
    encrypt_file(path, b"second", key=key)
    assert decrypt_file(path, key=key) == b"second"
    assert b"second" not in path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["store.bin"]  # no temporary left
    with pytest.raises(DecryptionError, match="store.bin"):
        decrypt_file(path, key=generate_key())


# ---------------------------------------------------------------- signing


def _model() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=5)]


def test_signing_round_trip() -> None:
    private, public = generate_signing_key()
    assert len(private) == 32 and len(public) == 32
    signature = sign_release(b"release 3", private_key=private)
    assert len(signature) == 64
    verify_release(b"release 3", signature, public_key=public)
    arrays = _model()
    verify_arrays(
        arrays, sign_arrays(arrays, round=3, private_key=private), round=3, public_key=public
    )


def test_tampered_payload_signature_or_key_raises_signature_error() -> None:
    private, public = generate_signing_key()
    signature = sign_release(b"release 3", private_key=private)
    bad_signature = bytes([signature[0] ^ 1]) + signature[1:]
    _, other_public = generate_signing_key()
    cases = [
        (b"release 4", signature, public),
        (b"release 3", bad_signature, public),
        (b"release 3", signature[:-1], public),
        (b"release 3", signature, other_public),
        (b"release 3", signature, public[:-1]),
    ]
    for payload, sig, key in cases:
        with pytest.raises(SignatureError, match="model release signature does not verify"):
            verify_release(payload, sig, public_key=key)


def test_device_refuses_a_tampered_model() -> None:
    private, public = generate_signing_key()
    arrays = _model()
    signature = sign_arrays(arrays, round=3, private_key=private)
    tampered = [a.copy() for a in arrays]
    tampered[0][1, 2] += 1e-3
    with pytest.raises(SignatureError):
        verify_arrays(tampered, signature, round=3, public_key=public)
    with pytest.raises(SignatureError):
        verify_arrays(arrays, signature, round=4, public_key=public)


def test_digest_changes_with_any_byte_shape_dtype_or_round() -> None:
    arrays = _model()
    base = release_digest(arrays, round=7)
    assert len(base) == 32 and release_digest(_model(), round=7) == base
    assert release_digest(arrays, round=8) != base
    for index, array in enumerate(arrays):
        raw = array.view(np.uint8).reshape(-1)
        for byte in range(raw.size):
            changed = [a.copy() for a in arrays]
            changed[index].view(np.uint8).reshape(-1)[byte] ^= 0x01
            assert release_digest(changed, round=7) != base, (index, byte)
    reshaped = [arrays[0].reshape(3, 4), arrays[1]]
    assert release_digest(reshaped, round=7) != base
    assert release_digest([arrays[0].reshape(-1), arrays[1]], round=7) != base
    assert release_digest([arrays[0].view(np.int32), arrays[1]], round=7) != base
    assert release_digest(arrays[::-1], round=7) != base
    assert release_digest(arrays[:1], round=7) != base
    # Split points matter: [a, b] and [a + b] hold the same bytes.
    flat = [np.concatenate([arrays[1][:2], arrays[1][2:]])]
    assert release_digest([arrays[1][:2], arrays[1][2:]], round=0) != release_digest(flat, round=0)


def test_digest_ignores_byte_order_and_memory_layout() -> None:
    arrays = _model()
    base = release_digest(arrays, round=1)
    swapped = [arrays[0].astype(">f4"), np.asfortranarray(arrays[1])]
    assert release_digest(swapped, round=1) == base
    assert release_digest([np.asfortranarray(arrays[0]), arrays[1]], round=1) == base


def test_digest_rejects_bad_rounds_and_objects() -> None:
    with pytest.raises(ValueError, match="round"):
        release_digest(_model(), round=-1)
    with pytest.raises(ValueError, match="object dtype"):
        release_digest([np.array([object()])], round=0)


@settings(max_examples=25, deadline=None)
@given(payload=st.binary(min_size=0, max_size=4096))
def test_one_pass_gives_the_payload_and_the_files_sha256(payload: bytes) -> None:
    """What a device pins (the whole file's SHA-256) comes from the same pass over the
    bytes as the signature check, and is what hashing the file gives."""
    private, public = generate_signing_key()
    signed = seal_signed(payload, private_key=private)
    body, digest = open_signed_with_sha256(signed, public_key=public)
    assert bytes(body) == payload == bytes(open_signed(signed, public_key=public))
    assert digest == hashlib.sha256(signed).digest()
    tampered = bytearray(signed)
    tampered[len(signed) // 2] ^= 1
    with pytest.raises(SignatureError, match="^f.stamen: "):
        open_signed_with_sha256(bytes(tampered), public_key=public, source="f.stamen")
