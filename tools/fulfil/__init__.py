"""The `fulfil` command line: what on-call engineers and operators run (topics, replays, dead letters, stock, keys,
benchmark, chaos, verification). One module per command group; ``cli.py`` registers them."""
