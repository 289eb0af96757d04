"""Pickles that must never be loaded."""


class CreatesAFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code execution."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))
