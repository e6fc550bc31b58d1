"""The command-line interface: one module per subcommand, registered by ``app.py``."""
