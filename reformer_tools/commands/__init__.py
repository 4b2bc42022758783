"""One module per subcommand; each parses options, calls the core, renders."""
