"""One module per ``avfused`` subcommand: HELP, add_arguments(parser), run(args) -> exit status."""
