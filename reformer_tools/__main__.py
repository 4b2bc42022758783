"""``python -m reformer_tools``."""

from reformer_tools.cli import main

main()
