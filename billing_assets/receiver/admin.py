"""Talking to a running reference receiver from another process (demo, CLI):
switch faults, read what it accepted.

Uses the same pinned-CA client context and SNI override as remittance
delivery, so the control channel is exactly as strict as the data channel.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

import httpx

from billing_assets.receiver.faults import ReceiverFaults
from billing_assets.receiver.server import ACCEPTED_PATH, FAULTS_PATH
from billing_assets.transport.tls import pinned_client_context


class ReceiverAdmin:
    def __init__(
        self, url: str, ca_cert: str | Path, server_name: str, auth: Literal["bearer", "basic"], credential: str, timeout_s: float = 10.0
    ) -> None:
        if auth == "basic":
            header = "Basic " + base64.b64encode(credential.encode()).decode()
        else:
            header = f"Bearer {credential}"
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            verify=pinned_client_context(Path(ca_cert)),
            headers={"Authorization": header, "Content-Type": "application/json"},
            timeout=timeout_s,
            trust_env=False,
        )
        self._extensions = {"sni_hostname": server_name}

    def __enter__(self) -> ReceiverAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def set_faults(self, faults: ReceiverFaults) -> ReceiverFaults:
        response = self._http.post(FAULTS_PATH, json=faults.to_dict(), extensions=self._extensions)
        response.raise_for_status()
        return ReceiverFaults.from_dict(response.json())

    def faults(self) -> ReceiverFaults:
        response = self._http.get(FAULTS_PATH, extensions=self._extensions)
        response.raise_for_status()
        return ReceiverFaults.from_dict(response.json())

    def accepted(self, totals_only: bool = False) -> dict:
        params = {"totals_only": "true"} if totals_only else {}
        response = self._http.get(ACCEPTED_PATH, params=params, extensions=self._extensions)
        response.raise_for_status()
        return response.json()

    def totals(self) -> dict[tuple[str, str], int]:
        return {(row["subscription"], row["unitType"]): row["amount"] for row in self.accepted(totals_only=True)["totals"]}
