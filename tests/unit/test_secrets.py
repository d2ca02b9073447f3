"""Secrets: encrypted at rest and sealed to one runner, checked before they are stored."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.errors import InvalidSecretError
from domain.registry import Repository, Tenant
from domain.secrets import MAX_VALUE_CHARS, Scope, check_name, check_value, context, for_job
from sealing import Keyring, KeyringError, Recipient, SealingError, seal

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
VALUE = "s3cr3t-välue\nwith a second line"


def test_a_secret_decrypts_only_as_itself_with_a_key_of_the_ring() -> None:
    keyring = Keyring.from_setting(Keyring.generate_key())
    where = context(Scope.REPOSITORY, "web", "TOKEN")
    ciphertext = keyring.encrypt(VALUE, where)
    assert VALUE not in ciphertext and VALUE.encode().hex() not in ciphertext
    assert keyring.decrypt(ciphertext, where) == VALUE
    assert keyring.encrypt(VALUE, where) != ciphertext  # a fresh nonce every time
    # Moved to another owner's or name's history, it does not decrypt.
    for elsewhere in (context(Scope.REPOSITORY, "api", "TOKEN"), context(Scope.TENANT, "web", "TOKEN"),
                      context(Scope.REPOSITORY, "web", "OTHER")):
        with pytest.raises(KeyringError, match="does not decrypt"):
            keyring.decrypt(ciphertext, elsewhere)
    tampered = ciphertext[:-2] + ("A" if ciphertext[-2] != "A" else "B") + ciphertext[-1]
    with pytest.raises(KeyringError):
        keyring.decrypt(tampered, where)


def test_keys_rotate_newest_first_and_old_ciphertexts_still_decrypt() -> None:
    old, new = Keyring.generate_key(), Keyring.generate_key()
    before = Keyring.from_setting(old).encrypt(VALUE, "c")
    rotated = Keyring.from_setting(f"{new}, {old}")
    after = rotated.encrypt(VALUE, "c")
    assert rotated.decrypt(before, "c") == rotated.decrypt(after, "c") == VALUE
    with pytest.raises(KeyringError, match="no longer holds"):
        Keyring.from_setting(new).decrypt(before, "c")


@pytest.mark.parametrize("setting", ["", "short", "not base64 !!", "a" * 44])
def test_a_malformed_key_is_refused_with_what_a_key_is(setting: str) -> None:
    with pytest.raises(KeyringError, match="LEDGERCI_SECRET_KEY"):
        Keyring.from_setting(setting)


def test_sealed_secrets_open_only_with_the_claims_key_for_that_attempt() -> None:
    runner, other = Recipient(), Recipient()
    box = seal({"TOKEN": VALUE, "B": "bbbb"}, runner.public_key, "job-1:2")
    assert VALUE not in box
    assert runner.open(box, "job-1:2") == {"TOKEN": VALUE, "B": "bbbb"}
    with pytest.raises(SealingError):
        other.open(box, "job-1:2")  # another runner (or a recording of the traffic) cannot
    with pytest.raises(SealingError):
        runner.open(box, "job-1:3")  # nor can it be replayed to another attempt
    with pytest.raises(SealingError):
        runner.open(box[:-4] + "AAAA", "job-1:2")


@pytest.mark.parametrize("key", ["", "AAAA", "!!", "A" * 43])
def test_sealing_to_a_malformed_or_unusable_key_is_refused(key: str) -> None:
    with pytest.raises(SealingError):
        seal({"A": "aaaa"}, key, "c")


@pytest.mark.parametrize("name", ["TOKEN", "_x", "a1_B", "A" * 128])
def test_secret_names_are_environment_variable_names(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize("name", ["", "1ST", "has-dash", "a b", "A" * 129, "A\n"])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidSecretError):
        check_name(name)


def test_values_too_short_to_mask_too_long_or_with_nul_are_refused() -> None:
    check_value("abcd")
    for value, reason in [("abc", "at least 4"), ("x" * (MAX_VALUE_CHARS + 1), "at most"), ("ab\0cd", "NUL")]:
        with pytest.raises(InvalidSecretError, match=reason):
            check_value(value)


def test_a_repository_secret_wins_over_its_tenants_and_missing_ones_are_named() -> None:
    chosen, missing = for_job(["A", "B", "C"], tenant={"A": "tenant-a", "B": "tenant-b"}, repository={"A": "repo-a"})
    assert chosen == {"A": "repo-a", "B": "tenant-b"}
    assert missing == ["C"]


def test_tenants_and_repositories_record_their_secrets_as_ciphertext_events() -> None:
    tenant = Tenant.create(tenant_id="acme", name="Acme", weight=1, max_concurrent_jobs=1, max_queued_runs=1,
                           pushes_per_minute=1, actor="admin", at=T0)
    repository = Repository.register(repository_id="web", tenant_id="acme", clone_url="file:///x", actor="admin",
                                     at=T0)
    for holder in (tenant, repository):
        holder.set_secret("TOKEN", "v1.k.cipher", T0, "admin")
        assert holder.secrets["TOKEN"].ciphertext == "v1.k.cipher"
        assert holder.delete_secret("TOKEN", T0, "admin")
        assert not holder.delete_secret("TOKEN", T0, "admin")  # already gone: nothing recorded
        assert "TOKEN" not in holder.secrets
    names = [type(event).__qualname__ for event in tenant.collect_events() + repository.collect_events()]
    assert names == ["Tenant.TenantCreated", "Tenant.SecretSet", "Tenant.SecretDeleted",
                     "Repository.RepositoryRegistered", "Repository.SecretSet", "Repository.SecretDeleted"]


def test_the_masker_hides_every_occurrence_even_split_across_chunks() -> None:
    from runner.masking import Masker

    masker = Masker(["hunter22", "hunter22-and-more", "zzzz"])
    chunks = [b"pass: hun", b"ter22 and ", b"hunter22-and-more; z", b"zz", b"z end hunt"]
    out = b"".join(masker.feed(chunk) for chunk in chunks) + masker.close()
    assert out == b"pass: *** and ***; *** end hunt"
    # Output that cannot be the start of a secret is sent at once, not held back.
    assert Masker(["hunter22"]).feed(b"plain line\n") == b"plain line\n"


def test_the_masker_masks_a_secret_wherever_the_output_is_cut() -> None:
    from runner.masking import Masker

    stream = b"a hunter22 b hunter22hunter22 c"
    for cut in range(len(stream) + 1):
        masker = Masker(["hunter22"])
        out = masker.feed(stream[:cut]) + masker.feed(stream[cut:]) + masker.close()
        assert out == b"a *** b ****** c", cut
