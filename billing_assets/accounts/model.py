"""The accounts file: targets, accounts, and which user belongs to which account when.

It decides who is invoiced for every byte, so it is validated like the source
registry: one bad entry refuses the whole file with a message naming the file,
the entry and the field, and nothing downstream runs on a half-read file (a
user silently dropped would become unassigned usage; a user listed twice
would be remitted twice).
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from billing_assets.core.hourly import Memberships
from billing_assets.core.timeutil import utc
from billing_assets.delivery.targets import Target
from billing_assets.registry.credentials import CredentialError, resolve_secret
from billing_assets.registry.model import read_yaml_file

NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class AccountsError(ValueError):
    """The accounts file cannot be used; the message names file, entry and field."""


class Membership(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uuid: str
    since: datetime | None = None

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        # The ledger is matched by string equality: an upper-case or braced
        # spelling of the right uuid would match nothing and go unassigned.
        try:
            canonical = str(uuid_module.UUID(value))
        except (ValueError, AttributeError, TypeError):
            raise ValueError("must be a uuid like 8c1f4c2e-0b6d-4e7a-9a51-3f0c2d7e9b10") from None
        if canonical != value:
            raise ValueError(f"must be written in canonical lower-case form ({canonical})")
        return value

    @field_validator("since")
    @classmethod
    def _since(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = utc(value)
        if value.second or value.microsecond:
            raise ValueError("must fall on a minute boundary (usage is attributed per minute)")
        return value


class Account(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account_id: str = Field(pattern=NAME)
    subscription_key: str = Field(min_length=1, max_length=255)
    users: tuple[Membership, ...] = ()
    targets: tuple[str, ...] = Field(min_length=1)


class AccountsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: dict[str, Target] = Field(default_factory=dict)
    accounts: tuple[Account, ...] = ()

    @field_validator("targets")
    @classmethod
    def _target_names(cls, value: dict) -> dict:
        import re

        for name in value:
            if not re.match(NAME, name):
                raise ValueError(f"target name {name!r} may hold only letters, digits, '-', '_' and '.'")
        return value


class Accounts:
    """A validated accounts file plus the membership index `account_at` reads."""

    def __init__(self, parsed: AccountsFile, origin: str):
        self.origin = origin
        self.targets: dict[str, Target] = dict(parsed.targets)
        self.accounts: dict[str, Account] = {account.account_id: account for account in parsed.accounts}
        self.memberships = Memberships.build(
            (member.uuid, member.since, account.account_id) for account in parsed.accounts for member in account.users
        )

    def account_at(self, user: str, minute: datetime) -> str | None:
        return self.memberships.account_at(user, minute)

    def accounts_of(self, target: str) -> list[Account]:
        return [account for account in self.accounts.values() if target in account.targets]


def _entry_name(raw: Mapping, index: int) -> str:
    entries = raw.get("accounts") or []
    entry = entries[index] if isinstance(entries, list) and index < len(entries) else {}
    name = entry.get("account_id") if isinstance(entry, dict) else None
    return f"account {name!r}" if name else f"accounts[{index}]"


def _describe(error: ValidationError, raw: Mapping) -> str:
    lines = []
    for item in error.errors():
        loc = list(item["loc"])
        where = "accounts file"
        if len(loc) >= 2 and loc[0] == "accounts" and isinstance(loc[1], int):
            where, loc = _entry_name(raw, loc[1]), loc[2:]
        elif len(loc) >= 2 and loc[0] == "targets":
            where, loc = f"target {loc[1]!r}", loc[2:]
            if loc and isinstance(loc[0], str) and loc[0] in ("killbill", "csv"):
                loc = loc[1:]  # the discriminated union's tag, not a field the operator wrote
        field = ".".join(str(part) for part in loc) or "(entry)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: field {field}: {message}")
    return "; ".join(lines)


def _cross_checks(parsed: AccountsFile, raw: Mapping, origin: str) -> list[str]:
    problems = []
    seen_accounts: set[str] = set()
    seen_subscriptions: dict[str, str] = {}
    owner: dict[tuple[str, datetime | None], str] = {}
    for index, account in enumerate(parsed.accounts):
        where = f"account {account.account_id!r}"
        if account.account_id in seen_accounts:
            problems.append(f"{where}: field account_id: listed twice")
        seen_accounts.add(account.account_id)
        if account.subscription_key in seen_subscriptions:
            problems.append(
                f"{where}: field subscription_key: {account.subscription_key!r} is also account "
                f"{seen_subscriptions[account.subscription_key]!r}'s; the target would add both accounts' usage up"
            )
        seen_subscriptions.setdefault(account.subscription_key, account.account_id)
        for position, name in enumerate(account.targets):
            if name not in parsed.targets:
                known = ", ".join(sorted(parsed.targets)) or "none defined"
                problems.append(f"{where}: field targets.{position}: unknown target {name!r} (targets: {known})")
        if len(set(account.targets)) != len(account.targets):
            problems.append(f"{where}: field targets: a target is listed twice")
        for position, member in enumerate(account.users):
            key = (member.uuid, member.since)
            if key in owner:
                since = "from the beginning" if member.since is None else f"since {member.since.isoformat()}"
                other = owner[key]
                what = "listed twice" if other == account.account_id else f"also in account {other!r}"
                problems.append(
                    f"{where}: field users.{position}: user {member.uuid} {what} {since}; "
                    "a user belongs to one account at a time (give the move a different 'since')"
                )
            owner.setdefault(key, account.account_id)
    return problems


def _credential_checks(parsed: AccountsFile) -> list[str]:
    """Secrets and CA bundles must be there now, not at the first send an hour later.

    Only presence is checked (no network); the message names the reference,
    never the secret.
    """
    problems = []
    for name, target in parsed.targets.items():
        if getattr(target, "kind", None) != "killbill":
            continue
        try:
            resolve_secret(target.credential_ref, "credential")
        except CredentialError as error:
            problems.append(f"target {name!r}: field credential_ref: {error}")
        ca_ref = getattr(target, "ca_bundle_ref", None)
        if ca_ref:
            path = Path(str(ca_ref).removeprefix("file:"))
            if not path.is_file():
                problems.append(f"target {name!r}: field ca_bundle_ref: CA bundle file {path} does not exist")
    return problems


def parse_accounts(raw: object, origin: str = "accounts file", check_credentials: bool = True) -> Accounts:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AccountsError(f"{origin}: expected a mapping with 'targets:' and 'accounts:'")
    for key in ("accounts",):
        if key in raw and not isinstance(raw[key], list):
            raise AccountsError(f"{origin}: '{key}' must be a list")
    if "targets" in raw and not isinstance(raw["targets"], dict):
        raise AccountsError(f"{origin}: 'targets' must be a mapping of name to target")
    try:
        parsed = AccountsFile.model_validate(raw)
    except ValidationError as error:
        raise AccountsError(f"{origin}: {_describe(error, raw)}") from None
    problems = _cross_checks(parsed, raw, origin)
    if check_credentials:
        problems += _credential_checks(parsed)
    if problems:
        raise AccountsError(f"{origin}: " + "; ".join(problems))
    return Accounts(parsed, origin)


def load_accounts(path: str | Path, check_credentials: bool = True) -> Accounts:
    """Read and validate the accounts file; any problem raises `AccountsError`.

    A missing file is an error, not "no accounts": with no accounts every
    byte would turn unassigned and nothing would be remitted, silently.
    """
    raw = read_yaml_file(path, "accounts file", AccountsError)
    return parse_accounts(raw, str(path), check_credentials)
