"""One function per command: load the config, build the engine, run it, raise the outcome."""
