"""A listing read from a pipe stops on a signal, whichever thread the kernel hands it to."""

import os
import signal
import threading
import time

import pytest

from lebench_cli.audio.streams import read_to_end


class Stopped(Exception):
    pass


@pytest.fixture
def usr1_raises():
    def stop(signum, frame):
        raise Stopped

    previous = signal.signal(signal.SIGUSR1, stop)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_a_signal_delivered_to_another_thread_ends_the_wait_on_a_quiet_pipe(usr1_raises):
    read_end, write_end = os.pipe()
    os.write(write_end, b"corpus\n")  # the writer stays open and quiet: a blocked read() sleeps through the signal
    ready = threading.Event()

    def other_thread():
        ready.set()
        time.sleep(0.3)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # to this thread, not the main one
        time.sleep(5)
        os.close(write_end)  # a read that slept through it returns here (5 s later), and the test fails

    thread = threading.Thread(target=other_thread)
    thread.start()
    ready.wait()
    started = time.monotonic()
    try:
        with open(read_end, "rb") as pipe, pytest.raises(Stopped):
            read_to_end(pipe)
        stopped_after = time.monotonic() - started
    finally:
        thread.join()
    assert stopped_after < 3
    assert signal.set_wakeup_fd(-1) == -1  # the wakeup descriptor was put back


def test_a_pipe_regular_file_and_text_stream_are_read_to_their_end(tmp_path):
    read_end, write_end = os.pipe()
    payload = b"a.wav\n" * 50_000  # more than one pipe buffer, written by a thread as it drains

    writer = threading.Thread(target=lambda: (os.write(write_end, payload), os.close(write_end)))
    writer.start()
    with open(read_end, "rb") as pipe:
        assert read_to_end(pipe) == payload
    writer.join()
    (tmp_path / "list").write_bytes(b"x\r\ny\n")
    with open(tmp_path / "list", "rb") as file:
        assert read_to_end(file) == b"x\r\ny\n"
    import io

    assert read_to_end(io.BytesIO(b"z")) == b"z"
