"""The application layer: run, up, bench, report, rescore. Only the CLI imports it."""
