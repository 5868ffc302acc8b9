"""The hash-chained, append-only audit trail (standard library + sqlite3 only; export signing uses cryptography)."""
