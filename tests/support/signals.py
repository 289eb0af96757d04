"""Signal set-up for tests that stop lebench."""

import signal


def default_sigint() -> None:
    """A shell's background job inherits SIGINT ignored, and lebench rightly keeps ignoring
    it: tests that send SIGINT must not depend on how pytest was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
