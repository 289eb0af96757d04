from .cli import main

# Guarded: worker processes started with "spawn" (--devices) import this module again.
if __name__ == "__main__":
    main()
