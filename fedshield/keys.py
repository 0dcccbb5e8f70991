"""``fedshield keys``: create signing key pairs for sites and the server, and export the
public halves for an auditor.

Layout of DIR: ``DIR/private/<name>.key`` (0600, folder 0700) and ``DIR/public/<name>.pub``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common.crypto import keys
from common.errors import ConfigError
from common.paths import writable_folder


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="create and export Ed25519 key pairs for the ledgers")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create key pairs (existing ones are kept)")
    create.add_argument("--dir", type=Path, required=True, help="key folder")
    create.add_argument("--sites", default="", help="site names, comma-separated (e.g. site-0,site-1), or a count")
    create.add_argument("--server", action="store_true", help="also create the server's key pair")
    create.add_argument(
        "--tls",
        action="store_true",
        help="also provision a deployment: a CA, the SuperLink's TLS certificate and each site's "
        "SuperNode authentication key; print the commands to start everything",
    )
    create.add_argument(
        "--server-names",
        default="localhost,127.0.0.1,::1",
        help="host names / IP addresses the SuperLink certificate is valid for",
    )
    create.add_argument("--superlink", default="127.0.0.1:9092", help="address the sites will connect to")
    export = ksub.add_parser("export", help="copy the public keys (only) to a folder for the auditor")
    export.add_argument("--dir", type=Path, required=True, help="key folder")
    export.add_argument("--to", type=Path, required=True, help="destination folder")


def _names(sites: str, server: bool) -> list[str]:
    sites = sites.strip()
    names = (
        [f"site-{i}" for i in range(int(sites))]
        if sites.isdigit()
        else [s.strip() for s in sites.split(",") if s.strip()]
    )
    for name in names:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"--sites: site name {name!r} may only hold letters, digits, '-' and '_'")
    if server:
        names.append("server")
    if not names:
        raise ConfigError("nothing to create: give --sites and/or --server")
    return names


def main(args: argparse.Namespace) -> int:
    private_dir, public_dir = args.dir / "private", args.dir / "public"
    if args.keys_command == "create":
        names = _names(args.sites, args.server)
        writable_folder(args.dir, "--dir")
        private_dir.mkdir(parents=True, exist_ok=True)
        private_dir.chmod(0o700)
        for name in names:
            existed = (private_dir / f"{name}{keys.PRIVATE_SUFFIX}").exists()
            key = keys.create_pair(
                private_dir / f"{name}{keys.PRIVATE_SUFFIX}", public_dir / f"{name}{keys.PUBLIC_SUFFIX}"
            )
            state = "kept" if existed else "created"
            print(
                f"{name}: {state}, key id {keys.fingerprint(key.public_key())}  "
                f"private {private_dir / (name + keys.PRIVATE_SUFFIX)}  public {public_dir / (name + '.pub')}"
            )
        print(f"Give the auditor the public keys only: fedshield keys export --dir {args.dir} --to AUDITOR_DIR")
        if args.tls:
            sites = _names(args.sites, False) if args.sites.strip() else []
            print(
                "\n".join(provision_deployment(args.dir.resolve(), sites, args.server_names.split(","), args.superlink))
            )
        return 0
    pubs = sorted(public_dir.glob(f"*{keys.PUBLIC_SUFFIX}"))
    if not pubs:
        raise ConfigError(f"{public_dir}: no public keys to export (run 'fedshield keys create' first)")
    writable_folder(args.to, "--to")
    for pub in pubs:
        keys.load_public(pub)  # refuse to export something that is not a public key
        shutil.copyfile(pub, args.to / pub.name)
        print(f"exported {pub.name}")
    return 0


def provision_deployment(directory: Path, sites: list[str], server_names: list[str], superlink: str) -> list[str]:
    """CA, SuperLink certificate and SuperNode keys under ``directory``; returns the commands to
    start the SuperLink, register each site and start each site's SuperNode."""
    from common.crypto import certs

    tls, nodes = directory / "tls", directory / "supernode"
    ca_crt, ca_key = certs.create_ca(tls)
    srv_crt, srv_key = certs.create_server_cert(tls, ca_crt, ca_key, names=[n.strip() for n in server_names if n])
    host, _, port = superlink.rpartition(":")
    lines = [
        "",
        f"CA certificate (give it to every site): {ca_crt}",
        f"SuperLink certificate for {', '.join(server_names)}: {srv_crt}",
        "",
        "# 1. On the server: start the SuperLink with TLS and SuperNode authentication",
        f"flower-superlink --ssl-ca-certfile {ca_crt} --ssl-certfile {srv_crt} --ssl-keyfile {srv_key} "
        f"--enable-supernode-auth --host {host} --port {port} --database {directory / 'superlink.db'} "
        "--disable-runtime-dependency-installation",
        "",
        "# 2. On the server: a flwr CLI connection, then register each site's SuperNode key",
        '#    $FLWR_HOME/config.toml:  [superlink] default = "fedshield"',
        f'#                             [superlink.fedshield] address = "{superlink}" root-certificates = "{ca_crt}"',
    ]
    for site in sites:
        _, public = certs.create_supernode_key(nodes, site)
        lines.append(f"flwr supernode register {public} fedshield --name {site}")
    lines += ["", "# 3. At each site: start its SuperNode (data, budget and ledger stay at the site)"]
    for i, site in enumerate(sites):
        lines.append(
            f"flower-supernode --root-certificates {ca_crt} --superlink {superlink} "
            f"--auth-supernode-private-key {nodes / (site + '.key')} "
            f'--node-config \'partition-id={i} num-partitions={len(sites)} site-name="{site}" '
            f'state-dir="/srv/fedshield/{site}" budget-epsilon=1.0 budget-delta=1e-5 require-dp=true\' '
            f"--host 127.0.0.1 --port {9094 + i}"
        )
    lines += ["", "# 4. On the server: launch a job", 'flwr run . fedshield --run-config "rounds=5" --stream']
    return lines
