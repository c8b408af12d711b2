"""The `fulfil` command line: what on-call engineers and operators run (topics, replays, dead letters, stock, keys,
benchmark, chaos, verification, contract docs)."""
