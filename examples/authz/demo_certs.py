"""Certificates for the authorization demos: a local CA and client SVIDs for curl.

``prepare(folder)`` creates (or reuses) a CA in ``folder`` and writes, for each demo caller,
``<sa>.pem`` (certificate chain) and ``<sa>-key.pem``, plus ``root-cert.pem`` for ``--cacert``.
"""

from __future__ import annotations

from pathlib import Path

from meshlib.identity import LocalCA

CALLERS = ("productpage", "admin", "stranger")
NAMESPACE = "store"


def prepare(folder: Path) -> LocalCA:
    ca = LocalCA.load(folder) if (folder / "ca-key.pem").exists() else LocalCA.create(folder)
    for account in CALLERS:
        svid = ca.issue(NAMESPACE, account)
        (folder / f"{account}.pem").write_bytes(svid.cert_chain_pem)
        key = folder / f"{account}-key.pem"
        key.write_bytes(svid.private_key_pem)
        key.chmod(0o600)
    return ca


def curl_lines(folder: Path, host: str, port: int, paths: tuple[str, ...]) -> list[str]:
    """The curl commands a reader can paste to try the policies."""
    lines = []
    for account in CALLERS:
        for path in paths:
            lines.append(
                f"curl -s -o /dev/null -w '%{{http_code}}  {account:<12}{path}\\n' --path-as-is"
                f" --cacert {folder}/root-cert.pem --cert {folder}/{account}.pem"
                f" --key {folder}/{account}-key.pem --resolve {host}:{port}:127.0.0.1"
                f" 'https://{host}:{port}{path}'"
            )
    return lines
