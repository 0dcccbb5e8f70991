"""Identity: Ed25519 ledger-signing keys and TLS certificates."""
