"""Command-line interface: thin — parse arguments, call a library function, print."""
