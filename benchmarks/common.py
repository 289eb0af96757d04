"""What the benchmarks share: their --work and --json-out arguments, the machine's description,
a sampler of a process tree's memory, text tables and JSON reports."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 16000


# ---- arguments ------------------------------------------------------------------------------

def default_work(name: str = "lebench-bench") -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / name


def add_work_argument(parser, name: str = "lebench-bench", help: str | None = None) -> None:
    parser.add_argument("--work", type=Path, default=default_work(name), **({"help": help} if help else {}))


def add_json_out_argument(parser) -> None:
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")


# ---- the machine ----------------------------------------------------------------------------

def quiet_env(threads: int | None = None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def brief_machine() -> dict:
    return {"date": datetime.date.today().isoformat(), "cpu_count": os.cpu_count(),
            "processor": platform.processor(), "python": platform.python_version()}


def machine_info(device: str = "") -> dict:
    """Date, host, CPU model, cores, memory, and torch's version, threads and GPU as a fresh
    interpreter sees them (this one may not have imported torch)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    versions = subprocess.run(
        [sys.executable, "-c", "import json, torch, lebench_cli; d = {'torch': torch.__version__, "
         "'torch_threads': torch.get_num_threads(), 'lebench': lebench_cli.__version__, "
         "'cuda': torch.cuda.is_available()};\n"
         "if d['cuda']: d['gpu'] = torch.cuda.get_device_name(0)\nprint(json.dumps(d))"],
        capture_output=True, text=True, env=quiet_env())
    try:
        info.update(json.loads(versions.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        info["versions_error"] = versions.stderr[-300:]
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")[0]
        info["memory_gb"] = round(int(meminfo.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


# ---- memory of a process tree ---------------------------------------------------------------

def _children_map() -> dict:
    children: dict = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _tree(pid: int) -> list:
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _gpu_used_mb() -> float | None:
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=10).stdout
        return float(output.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


class Sampler(threading.Thread):
    """Polls the process tree's summed PSS (and the GPU's used memory) until stopped."""

    def __init__(self, pid: int, gpu: bool, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.gpu, self.interval = pid, gpu, interval
        self.peak_pss = 0
        self.gpu_baseline = _gpu_used_mb() if gpu else None
        self.peak_gpu = self.gpu_baseline
        self.timeline = []  # (seconds since start, tree PSS MB), one point per 5 s
        self.stopped = threading.Event()

    def run(self):
        started = time.monotonic()
        while not self.stopped.is_set():
            pss = sum(_pss_bytes(p) for p in _tree(self.pid))
            self.peak_pss = max(self.peak_pss, pss)
            elapsed = time.monotonic() - started
            if not self.timeline or elapsed - self.timeline[-1][0] >= 5:
                self.timeline.append((round(elapsed, 1), round(pss / 1024**2)))
            if self.gpu_baseline is not None:
                used = _gpu_used_mb()
                if used is not None:
                    self.peak_gpu = max(self.peak_gpu, used)
            self.stopped.wait(self.interval)

    def gpu_mb(self):
        return None if self.gpu_baseline is None else self.peak_gpu - self.gpu_baseline


def measure(command: list, log: Path, env: dict, gpu: bool) -> dict:
    """Runs `command` (output to `log`): wall and CPU time, peak RSS, peak PSS of its tree,
    peak GPU memory."""
    started = time.monotonic()
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        sampler = Sampler(process.pid, gpu)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.stopped.set()
        sampler.join()
    return {
        "exit_code": process.returncode, "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024, "peak_tree_pss_mb": sampler.peak_pss / 1024**2,
        "peak_gpu_mb": sampler.gpu_mb(), "user_cpu_s": usage.ru_utime, "system_cpu_s": usage.ru_stime,
        "command": command, "pss_timeline_mb": sampler.timeline,
    }


def audio_files(folder: Path) -> list:
    """The audio files under `folder`, walked recursively, sorted."""
    extensions = {".wav", ".flac", ".ogg", ".mp3", ".opus"}
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in extensions and p.is_file())


def probe_corpus(folder: Path) -> list:
    """Durations (s) of the audio files under `folder`."""
    import soundfile

    return [soundfile.info(str(path)).duration for path in audio_files(folder)]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else 0


# ---- reports --------------------------------------------------------------------------------

def text_table(header: list, lines: list, numbers_right: bool = False) -> str:
    """Columns as wide as their widest cell. numbers_right: every column but the first
    right-aligned, under a rule of dashes; otherwise all left-aligned."""
    cells = [header, *lines]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    if not numbers_right:
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in cells)
    rows = ["  ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(line))
            for line in cells]
    rows.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(rows)


def write_json(path: Path, report: dict, indent: int = 2, newline: bool = False, **options) -> None:
    path.write_text(json.dumps(report, indent=indent, **options) + ("\n" if newline else ""))
