"""Inputs → batches → queue: CSV and folder sources, the inbox watcher, sweeps and exports."""
