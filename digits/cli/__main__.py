"""`python -m digits.cli`: what the worker supervisor and the tests run."""

from digits.cli import main

main()
