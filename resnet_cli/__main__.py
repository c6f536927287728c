"""Allow `python -m resnet_cli`."""

from resnet_cli.cli import main

main()
