"""`billing-receiver`: run the reference Kill Bill-shaped receiver as a process
(demo downstream, staging stand-in for a real Kill Bill), or switch the faults
of a running one (`billing-receiver faults ...`).

TLS is mandatory (--cert/--key or --generate-certs DIR, minted the same way
as the exporter's). The credential only ever comes from an environment
variable (--credential-env), never from argv, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from billing_assets.exporter.certs import generate_tls_material
from billing_assets.exporter.server import ServerTls
from billing_assets.receiver.admin import ReceiverAdmin
from billing_assets.receiver.faults import ReceiverFaults
from billing_assets.receiver.server import ReceiverServer


def _credential(parser: argparse.ArgumentParser, name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        parser.error(f"environment variable {name} is unset or empty")
    return value


def _faults_arg(parser: argparse.ArgumentParser, text: str | None) -> ReceiverFaults | None:
    if text is None:
        return None
    try:
        return ReceiverFaults.from_dict(json.loads(text))
    except (ValueError, TypeError) as error:
        parser.error(f"--faults / FAULTS must be a JSON object of ReceiverFaults fields ({error})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="billing-receiver", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9443, help="0 picks a free port")
    p.add_argument("--auth", choices=("bearer", "basic"), default="bearer")
    p.add_argument("--credential-env", metavar="NAME", required=True, help="env var with the token, or user:password for basic")
    p.add_argument("--cert", help="server certificate chain (PEM)")
    p.add_argument("--key", help="server private key (PEM)")
    p.add_argument("--generate-certs", metavar="DIR", help="mint a CA and a server certificate into DIR and use them")
    p.add_argument("--server-name", action="append", help="DNS name(s) for --generate-certs (default receiver.test)")
    p.add_argument("--duplicate-status", type=int, choices=(409, 200), default=409, help="answer to a known trackingId")
    p.add_argument("--faults", metavar="JSON", help='initial faults, e.g. \'{"rate_limit": true, "retry_after": "5"}\'')
    return p


def build_faults_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="billing-receiver faults", description="Show or replace the faults of a running receiver.")
    p.add_argument("--url", required=True)
    p.add_argument("--ca-cert", required=True)
    p.add_argument("--server-name", default="receiver.test")
    p.add_argument("--auth", choices=("bearer", "basic"), default="bearer")
    p.add_argument("--credential-env", metavar="NAME", required=True)
    p.add_argument("faults", nargs="?", metavar="FAULTS", help="JSON object; omitted = show current faults; '{}' = clear")
    return p


def faults_main(argv: list[str]) -> int:
    parser = build_faults_parser()
    args = parser.parse_args(argv)
    faults = _faults_arg(parser, args.faults)
    with ReceiverAdmin(args.url, args.ca_cert, args.server_name, args.auth, _credential(parser, args.credential_env)) as admin:
        current = admin.set_faults(faults) if faults is not None else admin.faults()
    print(json.dumps(current.to_dict(), sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["faults"]:
        return faults_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    credential = _credential(parser, args.credential_env)
    if args.auth == "basic" and ":" not in credential:
        parser.error(f"environment variable {args.credential_env} must hold user:password for --auth basic")
    if args.generate_certs:
        if args.cert or args.key:
            parser.error("--generate-certs and --cert/--key are exclusive")
        material = generate_tls_material(args.generate_certs, server_names=tuple(args.server_name or ("receiver.test",)))
        print(f"ca_cert={material.ca_cert}", flush=True)
        tls = ServerTls(material.server_cert, material.server_key)
    elif args.cert and args.key:
        tls = ServerTls(args.cert, args.key)
    else:
        parser.error("TLS is required: pass --cert and --key, or --generate-certs DIR")
    server = ReceiverServer(
        tls,
        auth=args.auth,
        credential=credential,
        host=args.host,
        port=args.port,
        faults=_faults_arg(parser, args.faults),
        duplicate_status=args.duplicate_status,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with server:
        print(f"billing-receiver listening on {server.url} (auth={args.auth})", flush=True)
        while not stop.wait(0.5):
            pass
    print(f"billing-receiver stopped ({server.store.accepted_count()} records accepted)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
