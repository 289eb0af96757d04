"""`lebench` commands, one module each, registered in cli.py."""
