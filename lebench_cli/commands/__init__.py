"""`lebench` commands beyond the core ones of cli.py, one module each, registered in cli.py."""
