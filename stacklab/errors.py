"""Errors that reach the user as one clear line, never as a traceback."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """Bad input from the user (a file, an argument): exit 2 with one line on stderr."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"stacklab: error: {self.format_message()}", err=True)
