"""Every registry rule, each failing with a message that names the source and
the field, so an operator can fix sources.yaml without reading code.

Also the negative space of TLS configuration: no field, however spelled, can
turn certificate verification off, and the package holds no code that could.
"""

from __future__ import annotations

import re
from datetime import timedelta, timezone
from pathlib import Path

import pytest
import yaml

import billing_assets
from billing_assets.registry.model import RegistryError, load_registry, parse_registry

GOOD = {
    "source_id": "eu-1",
    "node_id": "node-eu-1",
    "env": "prod",
    "base_url": "https://10.0.0.7:9443",
    "auth_mode": "mtls",
    "credential_ref": "file:/etc/billing/eu-1/client.pem",
    "ca_bundle_ref": "file:/etc/billing/eu-1/ca.pem",
    "server_name": "eu-1.exporter.internal",
    "billing_start": "2026-11-01T00:00:00Z",
}


def entry(**changes) -> dict:
    merged = {**GOOD, **changes}
    return {key: value for key, value in merged.items() if value is not None}


def refused(*entries: dict) -> str:
    with pytest.raises(RegistryError) as error:
        parse_registry({"sources": list(entries)}, "sources.yaml")
    return str(error.value)


def test_a_complete_entry_is_accepted_with_its_defaults():
    source = parse_registry({"sources": [GOOD]}).get("eu-1")
    assert source.enabled and source.mode == "window" and source.page_limit == 100
    assert source.request_timeout == timedelta(seconds=10) and source.collect_interval == timedelta(seconds=60)
    assert source.billing_start.tzinfo == timezone.utc
    assert not source.plain_http and not source.dev_allow_plain_http
    assert source.ca_bundle_path == Path("/etc/billing/eu-1/ca.pem")


RULES = [
    # (changes, field named in the message, message fragment)
    ({"source_id": "eu|1"}, "source_id", "only letters, digits"),
    # A range key 'START|id...END|id' is split on '...': these ids would split it wrongly.
    ({"source_id": ".."}, "source_id", "must not contain '..'"),
    ({"source_id": "x..."}, "source_id", "must not contain '..'"),
    ({"source_id": "eu..1"}, "source_id", "is split on '...'"),
    ({"source_id": "eu-1."}, "source_id", "must not start or end with '.'"),
    ({"source_id": ".eu-1"}, "source_id", "must not start or end with '.'"),
    ({"node_id": ""}, "node_id", "at least 1 character"),
    ({"env": ""}, "env", "at least 1 character"),
    ({"base_url": "http://10.0.0.7:9080"}, "base_url", "must be https:// (plain http:// needs dev_allow_plain_http"),
    ({"base_url": "http://10.0.0.7:9080", "dev_allow_plain_http": True}, "base_url", "only for loopback addresses"),
    ({"base_url": "http://exporter.example:9080", "dev_allow_plain_http": True}, "base_url", "only for loopback"),
    ({"base_url": "ftp://10.0.0.7"}, "base_url", "must be https://, not ftp://"),
    ({"base_url": "10.0.0.7:9443"}, "base_url", "must be https://"),
    ({"base_url": "https://"}, "base_url", "must be https://host[:port]"),
    ({"base_url": "https://:9443"}, "base_url", "has no host"),
    ({"base_url": "https://10.0.0.7:99999"}, "base_url", "invalid port"),
    ({"base_url": "https://10.0.0.7:9443/?token=x"}, "base_url", "must not carry a query"),
    ({"base_url": "https://user:hunter2-secret@10.0.0.7"}, "base_url", "must not carry credentials"),
    ({"auth_mode": "none"}, "auth_mode", "'mtls' or 'bearer'"),
    ({"auth_mode": None}, "auth_mode", "Field required"),
    ({"credential_ref": "hunter2-literal-secret"}, "credential_ref", "must be 'env:NAME' or 'file:/absolute/path'"),
    ({"credential_ref": "env:"}, "credential_ref", "must be 'env:NAME'"),
    ({"credential_ref": "file:relative/client.pem"}, "credential_ref", "file:/absolute/path"),
    ({"credential_ref": None}, "credential_ref", "Field required"),
    ({"ca_bundle_ref": "system"}, "ca_bundle_ref", "pinned CA bundle"),
    ({"ca_bundle_ref": None}, "ca_bundle_ref", "Field required"),
    ({"server_name": ""}, "server_name", "at least 1 character"),
    ({"server_name": "eu-1.exporter.internal/v1"}, "server_name", "host name in the exporter's certificate"),
    ({"server_name": "https://eu-1.exporter.internal"}, "server_name", "no scheme, port or path"),
    ({"server_name": "eu-1.exporter.internal:9443"}, "server_name", "no scheme, port or path"),
    ({"server_name": None}, "server_name", "Field required"),
    ({"request_timeout": "soon"}, "request_timeout", "is not a duration"),
    ({"collect_interval": "1 minute"}, "collect_interval", "is not a duration"),
    ({"billing_start": "2026-11-01T00:00:00"}, "billing_start", "must carry a UTC offset"),
    ({"page_limit": 0}, "page_limit", "greater than or equal to 1"),
    ({"page_limit": 5000}, "page_limit", "less than or equal to 1000"),
    ({"mode": "push"}, "mode", "'window', 'legacy_latest' or 'dual'"),
    ({"enabled": "sometimes"}, "enabled", "valid boolean"),
]


@pytest.mark.parametrize("changes, field, fragment", RULES, ids=[f"{r[1]}:{i}" for i, r in enumerate(RULES)])
def test_each_rule_names_the_source_and_the_field(changes, field, fragment):
    message = refused(entry(**changes))
    name = changes.get("source_id", "eu-1")
    assert message.startswith(f"sources.yaml: source {name!r}: field {field}: "), message
    assert fragment in message
    assert "hunter2" not in message, "a value that may be a secret must not be echoed"


def test_dotted_ids_inside_the_name_stay_valid():
    registry = parse_registry({"sources": [entry(source_id="eu.1"), entry(source_id="a.b-c_d.e", node_id="node-2")]})
    assert [source.source_id for source in registry.sources] == ["eu.1", "a.b-c_d.e"]


def test_an_entry_without_a_usable_id_is_named_by_position():
    message = refused(entry(source_id="eu-1"), entry(source_id=None, node_id="node-2"))
    assert "sources[1]: field source_id: Field required" in message


def test_every_problem_is_reported_at_once():
    message = refused(entry(base_url="http://10.0.0.7", server_name="", page_limit=0))
    assert "field base_url" in message and "field server_name" in message and "field page_limit" in message


def test_plain_http_on_loopback_needs_the_dev_flag_and_is_then_accepted():
    for url in ("http://127.0.0.1:9080", "http://localhost:9080", "http://[::1]:9080"):
        assert "needs dev_allow_plain_http" in refused(entry(base_url=url))
        source = parse_registry({"sources": [entry(base_url=url, dev_allow_plain_http=True)]}).get("eu-1")
        assert source.plain_http
    https = parse_registry({"sources": [entry(dev_allow_plain_http=True)]}).get("eu-1")
    assert not https.plain_http, "the dev flag does nothing to an https:// source"


def test_scheme_is_normalised_so_https_is_never_mistaken_for_plain_http():
    source = parse_registry({"sources": [entry(base_url="HTTPS://10.0.0.7:9443")]}).get("eu-1")
    assert source.base_url == "https://10.0.0.7:9443" and not source.plain_http
    assert "needs dev_allow_plain_http" in refused(entry(base_url="HTTP://127.0.0.1:9080"))


@pytest.mark.parametrize(
    "field, value",
    [("insecure", True), ("verify", False), ("skip_verify", True), ("tls_verify", False),
     ("insecure_skip_verify", True), ("ssl_verify", False), ("check_hostname", False), ("ca_bundle", "none")],
)
def test_no_field_can_switch_verification_off(field, value):
    message = refused(entry(**{field: value}))
    assert f"source 'eu-1': field {field}: Extra inputs are not permitted" in message


def test_duplicate_source_ids_and_shared_nodes_are_refused():
    assert "source 'eu-1' is listed twice" in refused(entry(), entry(node_id="node-other"))
    message = refused(entry(), entry(source_id="eu-1b"))
    assert "sources 'eu-1' and 'eu-1b' both claim node_id='node-eu-1' env='prod'" in message


def test_registry_file_problems_name_the_file(tmp_path):
    path = tmp_path / "sources.yaml"
    with pytest.raises(RegistryError, match="cannot read registry"):
        load_registry(path)
    path.write_text("sources: [\n")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(path)
    path.write_text(yaml.safe_dump({"source": []}))
    with pytest.raises(RegistryError, match="expected a mapping with a 'sources:' list"):
        load_registry(path)
    path.write_text(yaml.safe_dump({"sources": {"eu-1": GOOD}}))
    with pytest.raises(RegistryError, match="'sources' must be a list"):
        load_registry(path)
    path.write_text(yaml.safe_dump({"sources": [GOOD], "insecure": True}))
    with pytest.raises(RegistryError, match="field insecure: Extra inputs are not permitted"):
        load_registry(path)
    path.write_text(yaml.safe_dump({"sources": [GOOD]}))
    assert [source.source_id for source in load_registry(path).sources] == ["eu-1"]


# -- no code path that turns verification off --------------------------------

PACKAGE = Path(billing_assets.__file__).parent
DISABLING = re.compile(
    r"verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False|_create_unverified_context|"
    r"insecure|skip[_-]?verify|no[_-]?verify|PYTHONHTTPSVERIFY",
    re.IGNORECASE,
)


def test_package_holds_no_switch_that_disables_verification():
    offending = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if DISABLING.search(line):
                offending.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offending == []


def test_the_grep_would_see_a_switch():
    assert DISABLING.search("    client = httpx.Client(verify=False)")
    assert DISABLING.search("context.verify_mode = ssl.CERT_NONE")
    assert DISABLING.search("context.check_hostname = False")
    assert DISABLING.search('os.environ.get("BILLING_INSECURE")')
