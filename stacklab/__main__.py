"""``python -m stacklab`` runs the command-line interface."""

from stacklab.cli import main

main()
