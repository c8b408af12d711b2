"""Drills against a running stack: the benchmark, the chaos drill, history growth, CPU accounting, the console's
bench and the contract-schema export. The only part of ``tools`` that reaches into ``deploy/local`` or builds the
services."""
