"""`billing-exporter`: run the reference exporter as a process (demo upstream,
staging stand-in for a real xray-exporter).

TLS is mandatory: either pass --cert/--key or let --generate-certs mint a
throwaway CA. The bearer token only ever comes from an environment variable
(--token-env), never from argv, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from billing_assets.exporter.certs import generate_tls_material
from billing_assets.exporter.server import ExporterServer, ServerTls
from billing_assets.exporter.traffic import TrafficShape


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="billing-exporter", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    p.add_argument("--source-id", default="local-1")
    p.add_argument("--node-id", default="node-1")
    p.add_argument("--env", default="dev")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--tags-per-user", type=float, default=1.5)
    p.add_argument("--interval", type=int, default=15, help="seconds between snapshots")
    p.add_argument("--restart-every", type=int, default=6 * 3600, help="seconds; 0 = never restart")
    p.add_argument("--visibility-delay", type=float, default=0.0, help="hold back snapshots younger than this")
    p.add_argument("--cert", help="server certificate chain (PEM)")
    p.add_argument("--key", help="server private key (PEM)")
    p.add_argument("--client-ca", help="CA bundle for client certificates; enables mTLS")
    p.add_argument("--token-env", metavar="NAME", help="environment variable holding the bearer token")
    p.add_argument("--generate-certs", metavar="DIR", help="mint CA, server and client certs into DIR and use them")
    p.add_argument("--server-name", action="append", help="DNS name(s) for --generate-certs (default exporter.test)")
    return p


def _resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[ServerTls, str, str | None]:
    if args.generate_certs:
        if args.cert or args.key:
            parser.error("--generate-certs and --cert/--key are exclusive")
        names = tuple(args.server_name or ("exporter.test",))
        material = generate_tls_material(args.generate_certs, server_names=names)
        print(f"ca_cert={material.ca_cert}", flush=True)
        print(f"server_cert={material.server_cert}", flush=True)
        print(f"server_key={material.server_key}", flush=True)
        print(f"client_cert_key={material.client_cert_key}", flush=True)
        cert, key = material.server_cert, material.server_key
        client_ca = args.client_ca or (None if args.token_env else material.ca_cert)
    elif args.cert and args.key:
        cert, key, client_ca = args.cert, args.key, args.client_ca
    else:
        parser.error("TLS is required: pass --cert and --key, or --generate-certs DIR")
    if client_ca:
        return ServerTls(cert, key, client_ca), "mtls", None
    if not args.token_env:
        parser.error("choose an auth mode: --client-ca (mTLS) or --token-env NAME (bearer)")
    token = os.environ.get(args.token_env, "")
    if not token:
        parser.error(f"environment variable {args.token_env} is unset or empty")
    return ServerTls(cert, key), "bearer", token


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tls, auth, token = _resolve(args, parser)
    shape = TrafficShape(
        node_id=args.node_id,
        env=args.env,
        source_id=args.source_id,
        seed=args.seed,
        users=args.users,
        tags_per_user=args.tags_per_user,
        interval_s=args.interval,
        restart_every_s=args.restart_every or None,
    )
    server = ExporterServer(
        shape,
        tls,
        auth=auth,
        bearer_token=token,
        host=args.host,
        port=args.port,
        visibility_delay_s=args.visibility_delay,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with server:
        print(
            f"billing-exporter listening on {server.url} "
            f"(auth={auth}, source_id={shape.source_id}, node_id={shape.node_id}, env={shape.env})",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    print("billing-exporter stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
