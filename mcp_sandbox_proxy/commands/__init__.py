"""The subcommands of the ``mcp-sandbox-proxy`` command line.

Each module has ``register(subparsers: Subparsers)``, which adds its subcommand
and sets ``handler`` to a function of the parsed arguments returning the exit
status.
"""

from __future__ import annotations

from argparse import (
    ArgumentParser,
    _SubParsersAction,  # pyright: ignore[reportPrivateUsage]
)
from typing import TypeAlias

# argparse names the type of ``add_subparsers()``'s result only privately.
Subparsers: TypeAlias = "_SubParsersAction[ArgumentParser]"
