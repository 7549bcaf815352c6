"""One module per `python -m core` subcommand, each with add_arguments(parser) and run(args) -> int."""
