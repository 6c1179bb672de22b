"""One module per ``stacklab`` subcommand; see :data:`stacklab.cli.COMMANDS`."""
