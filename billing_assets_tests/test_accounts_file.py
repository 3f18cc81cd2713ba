"""The accounts file refuses every mistake that would invoice the wrong party,
naming the file, the entry and the field; `account_at` follows moves exactly."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import yaml

from billing_assets.accounts.model import AccountsError, load_accounts, parse_accounts

U1 = "8c1f4c2e-0b6d-4e7a-9a51-3f0c2d7e9b10"
U2 = "1d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5"
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def ca_file(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def document(ca_file, **changes) -> dict:
    base = {
        "targets": {
            "kb": {
                "kind": "killbill", "base_url": "https://127.0.0.1:8443", "auth_mode": "bearer",
                "credential_ref": "env:ACCOUNTS_TEST_TOKEN", "ca_bundle_ref": f"file:{ca_file}",
                "server_name": "kb.test",
            },
            "zuora": {"kind": "csv", "directory": "/var/lib/billing/remit"},
        },
        "accounts": [
            {"account_id": "acme", "subscription_key": "acme-traffic", "targets": ["kb", "zuora"],
             "users": [{"uuid": U1}, {"uuid": U2, "since": "2026-11-22T10:30:00Z"}]},
            {"account_id": "globex", "subscription_key": "globex-traffic", "targets": ["kb"],
             "users": [{"uuid": U2}]},
        ],
    }
    base.update(changes)
    return base


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("ACCOUNTS_TEST_TOKEN", "s3cret-token-value")


def refused(raw) -> str:
    with pytest.raises(AccountsError) as error:
        parse_accounts(raw, "accounts.yaml")
    return str(error.value)


def test_a_good_file_loads_and_account_at_follows_the_latest_since(ca_file, tmp_path):
    path = tmp_path / "accounts.yaml"
    path.write_text(yaml.safe_dump(document(ca_file)))
    accounts = load_accounts(path)
    assert set(accounts.targets) == {"kb", "zuora"} and set(accounts.accounts) == {"acme", "globex"}
    assert accounts.account_at(U1, T0) == "acme"
    # U2 is globex's from the beginning, acme's from 10:30 on the minute exactly.
    assert accounts.account_at(U2, T0 + timedelta(minutes=29)) == "globex"
    assert accounts.account_at(U2, T0 + timedelta(minutes=30)) == "acme"
    assert accounts.account_at(U2, T0 + timedelta(days=30)) == "acme"
    assert accounts.account_at("00000000-0000-4000-8000-000000000000", T0) is None
    assert [a.account_id for a in accounts.accounts_of("zuora")] == ["acme"]


def test_a_user_whose_first_membership_starts_later_is_unassigned_before_it(ca_file):
    raw = document(ca_file)
    raw["accounts"][1]["users"] = [{"uuid": "2d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5", "since": "2026-11-22T11:00:00Z"}]
    accounts = parse_accounts(raw)
    assert accounts.account_at("2d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5", T0) is None
    assert accounts.account_at("2d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5", T0 + timedelta(hours=1)) == "globex"


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda raw: raw["accounts"][0]["users"].append({"uuid": "not-a-uuid"}),
         ["accounts.yaml", "account 'acme'", "field users.2.uuid", "must be a uuid"]),
        (lambda raw: raw["accounts"][0]["users"].append({"uuid": U1.upper()}),
         ["account 'acme'", "field users.2.uuid", "canonical lower-case"]),
        (lambda raw: raw["accounts"][1]["users"].append({"uuid": U1}),
         ["account 'globex'", "field users.1", f"user {U1} also in account 'acme' from the beginning"]),
        (lambda raw: raw["accounts"][0]["users"].append({"uuid": U2, "since": "2026-11-22T10:30:00Z"}),
         ["account 'acme'", "field users.2", "listed twice since 2026-11-22T10:30:00+00:00"]),
        (lambda raw: raw["accounts"][0]["users"].append({"uuid": U1, "since": "2026-11-22T10:30:30Z"}),
         ["account 'acme'", "field users.2.since", "minute boundary"]),
        (lambda raw: raw["accounts"][1].update(targets=["kb", "marketplace"]),
         ["account 'globex'", "field targets.1", "unknown target 'marketplace'"]),
        (lambda raw: raw["accounts"][1].update(targets=[]),
         ["account 'globex'", "field targets", "at least 1"]),
        (lambda raw: raw["accounts"][1].update(subscription_key="acme-traffic"),
         ["account 'globex'", "field subscription_key", "also account 'acme'"]),
        (lambda raw: raw["accounts"].append(dict(raw["accounts"][1], subscription_key="other")),
         ["account 'globex'", "field account_id", "listed twice"]),
        (lambda raw: raw["accounts"][0].update(colour="red"),
         ["account 'acme'", "field colour", "Extra inputs"]),
        (lambda raw: raw["targets"]["kb"].update(base_url="http://127.0.0.1:8080"),
         ["target 'kb'", "field base_url", "https://"]),
        (lambda raw: raw["targets"]["zuora"].update(directory="relative/dir"),
         ["target 'zuora'", "field directory", "absolute"]),
        (lambda raw: raw["targets"]["kb"].update(kind="sftp"),
         ["target 'kb'", "field", "kind"]),
    ],
)
def test_each_mistake_names_file_entry_and_field(ca_file, mutate, fragments):
    raw = document(ca_file)
    mutate(raw)
    message = refused(raw)
    for fragment in fragments:
        assert fragment in message, message


def test_a_missing_credential_or_ca_is_refused_without_network_and_without_the_secret(ca_file, monkeypatch):
    monkeypatch.delenv("ACCOUNTS_TEST_TOKEN")
    message = refused(document(ca_file))
    assert "target 'kb': field credential_ref" in message and "ACCOUNTS_TEST_TOKEN is not set" in message
    monkeypatch.setenv("ACCOUNTS_TEST_TOKEN", "s3cret-token-value")
    ca_file.unlink()
    message = refused(document(ca_file))
    assert "target 'kb': field ca_bundle_ref" in message and "does not exist" in message
    assert "s3cret-token-value" not in message


def test_a_missing_or_broken_file_is_an_error_not_an_empty_file(tmp_path):
    with pytest.raises(AccountsError, match="cannot read accounts file"):
        load_accounts(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("accounts: [\n")
    with pytest.raises(AccountsError, match=r"broken.yaml: not valid YAML"):
        load_accounts(broken)
    listed = tmp_path / "listed.yaml"
    listed.write_text("accounts: {acme: 1}\n")
    with pytest.raises(AccountsError, match="'accounts' must be a list"):
        load_accounts(listed)
