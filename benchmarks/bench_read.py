#!/usr/bin/env python
"""How fast stored features come back for training: lebench's store against the formats
downstream tools read, on one corpus, through a torch DataLoader.

One run builds one corpus of random float16 features with large-model shapes (25 layers of
1024, a log-normal 2-20 s length mix), written by lebench's ShardWriter and, from the same
arrays, as every peer format:

  lebench       lebench's HDF5 shards, read with open_features(...).read(id, layers), one call per utterance
  npy           one ID.npy per utterance and layer (np.load)
  npy-stacked   one ID.npy [25, frames, 1024] per utterance (np.load with mmap_mode, the
                selected layers copied out)
  numpy_hdf5    lhotse's NumpyHdf5Writer/Reader, one file per layer, exact
  lilcom_chunky lhotse's LilcomChunkyWriter/Reader, one file per layer: LOSSY (lilcom
                quantises; about 4x smaller), shown for its speed only; needs `lilcom`
  kaldi         one float32 ark/scp per layer written by kaldiio, read through load_scp
                (kaldi has no float16 matrices: twice the bytes on disk)

Each case reads every utterance once per pass in random order through a DataLoader (batches
of about --batch-seconds of frames, num_workers 0 and 4; items are [layers, frames, 1024]
tensors, batches are lists: no padding, which would cost every format the same). Each case
runs in its own process, so no file handle crosses a fork, and starts with an untimed pass
(workers started, files and indexes opened: the state of a training job after its first
epoch). "warm": then passes for at least --min-seconds; "cold": then at least 3 passes (and
--min-seconds), each after the page cache is emptied of the corpus, with `echo 3 >
/proc/sys/vm/drop_caches` where allowed (--cold drop), or posix_fadvise(POSIX_FADV_DONTNEED)
on every file of the corpus (--cold fadvise: only this corpus's pages, others' stay); auto
takes drop when /proc/sys/vm/drop_caches is writable: every read then comes from the disk,
as in an epoch over a corpus larger than memory. MB/s counts the float16 bytes
delivered (frames x width x layers x 2, padding not counted), whatever the format holds on
disk. The main process only counts what it is handed; with --touch it also reads one value
of every 4 KiB page of each item, as a copy to the GPU would, so that mapping what workers
send is paid. --collate pad pads each batch into one tensor (in the worker, where there are
workers), as training does: lebench through FeatureDataset(..., dtype="float16") and
dataset.collate, the others through lebench's collate_features (a new zeroed tensor, like
torch's pad_sequence).

Every lebench case runs twice: as readers get it (each read checked against its xxh3
checksum) and with open_features(..., verify=False); "check cost" is how much longer the
checked pass took (checked seconds / unchecked seconds - 1, per utterance).

Run from the repository root:  .venv/bin/python -m benchmarks.bench_read --help
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import REPO, add_json_out_argument, add_work_argument, folder_bytes, write_json

FORMATS = ("lebench", "npy", "npy-stacked", "numpy_hdf5", "lilcom_chunky", "kaldi")
NUM_LAYERS, WIDTH, FRAME_RATE = 25, 1024, 50


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.5, help="lebench store size to build, GB (default 1.5)")
    parser.add_argument("--quick", action="store_true", help="a tiny corpus and one case per format (a smoke test)")
    parser.add_argument("--layers", default="1,3,25", help="layer counts to read (default 1,3,25)")
    parser.add_argument("--workers", default="0,4", help="DataLoader num_workers values (default 0,4)")
    parser.add_argument("--batch-seconds", type=float, default=100.0, help="audio seconds of frames per batch (default 100)")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"which formats (default {','.join(FORMATS)})")
    parser.add_argument("--cache", default="warm,cold", help="warm, cold or both (default both)")
    parser.add_argument("--cold", choices=("auto", "drop", "fadvise"), default="auto",
                        help="how the cold case empties the page cache (default auto)")
    add_work_argument(parser, "lebench-bench-read", help="corpus folder (kept and reused when its parameters match)")
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="timed passes last at least this long (default 3; --quick: 0)")
    parser.add_argument("--collate", choices=("list", "pad"), default="list",
                        help="batches as lists of items (default), or padded into one tensor: lebench through "
                             "FeatureDataset and dataset.collate, every other format through collate_features "
                             "(a new zeroed tensor, as torch's pad_sequence)")
    parser.add_argument("--touch", action="store_true",
                        help="the main process reads one value of every 4 KiB page of each item, as copying it to "
                             "a GPU would: what mapping the workers' tensors costs is counted")
    parser.add_argument("--seed", type=int, default=0)
    add_json_out_argument(parser)
    parser.add_argument("--breakdown", action="store_true",
                        help="instead: where one lebench read's time goes (warm), per utterance")
    parser.add_argument("--check-cost", action="store_true",
                        help="only the cost of checking reads: lebench read checked and unchecked, interleaved "
                             "round by round in one process, best round of each")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args(argv)
    if args.quick:  # cases run in this process (no worker forks): cold figures are warmer than real
        args.gb, args.layers, args.workers = min(args.gb, 0.02), "1,25", "0"
    args.layer_counts = [int(count) for count in args.layers.split(",")]
    args.worker_counts = [int(count) for count in args.workers.split(",")]
    args.format_list = [name for name in args.formats.split(",") if name]
    unknown = set(args.format_list) - set(FORMATS)
    if unknown or any(not 1 <= count <= NUM_LAYERS for count in args.layer_counts):
        parser.error(f"formats are {', '.join(FORMATS)}; layer counts 1..{NUM_LAYERS}")
    return args


# ---- the corpus -------------------------------------------------------------------------------

def utterance_frames(gb: float, seed: int) -> list:
    """Log-normal 2-20 s utterances (median about 5 s) up to GB of 25 x 1024 float16 frames."""
    generator = np.random.default_rng(seed)
    budget, frames = gb * 1e9 / (NUM_LAYERS * WIDTH * 2), []
    while sum(frames) < budget:
        seconds = float(np.clip(generator.lognormal(np.log(5.0), 0.6), 2.0, 20.0))
        frames.append(int((seconds * 16000 - 400) // 320 + 1))
    return frames


def build_corpus(work: Path, frames: list, formats: list, seed: int) -> dict:
    """Writes every format from the same arrays, one utterance at a time; skips what exists."""
    stamp = work / "corpus.json"
    described = {"frames": frames, "seed": seed, "layers": NUM_LAYERS, "width": WIDTH}
    done = json.loads(stamp.read_text()) if stamp.exists() else {}
    if {key: done.get(key) for key in described} != described:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        done = dict(described, formats=[])
    todo = [name for name in formats if name not in done.get("formats", []) and available(name)]
    if todo:
        started = time.perf_counter()
        writers = [WRITERS[name](work / name) for name in todo]
        generator = np.random.default_rng(seed)
        for index, count in enumerate(frames):
            layers = generator.standard_normal((NUM_LAYERS, count, WIDTH), dtype=np.float32).astype(np.float16)
            for writer in writers:
                writer.add(f"spk{index % 10}/utt{index:05d}", layers)
        for writer in writers:
            writer.close()
        done["formats"] = sorted(set(done.get("formats", [])) | set(todo))
        stamp.write_text(json.dumps(done))
        print(f"built {', '.join(todo)} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return done


def available(name: str) -> bool:
    if name != "lilcom_chunky":
        return True
    try:
        importlib.import_module("lilcom")
    except ImportError:
        return False
    return True


class LebenchCorpus:
    def __init__(self, folder: Path):
        from lebench_cli.storage import PartLock, ShardWriter, WriterOptions, prepare_output

        layers = [str(layer) for layer in range(NUM_LAYERS)]
        prepare_output(folder, {"identity": {"layers": layers}, "model": {"num_layers": NUM_LAYERS - 1}},
                       overwrite=False)
        self.lock = PartLock(folder, 1, 1)
        self.lock.__enter__()
        self.writer = ShardWriter(folder, WriterOptions(layers=layers))

    def add(self, utt_id: str, layers: np.ndarray) -> None:
        from lebench_cli.storage import StoredUtterance

        states = {str(layer): layers[layer] for layer in range(NUM_LAYERS)}
        self.writer.add(StoredUtterance(utt_id, f"{utt_id}.wav", len(layers[0]) / FRAME_RATE, len(layers[0]), states))

    def close(self) -> None:
        self.writer.close()
        self.lock.__exit__(None, None, None)


class NpyCorpus:
    def __init__(self, folder: Path, stacked: bool = False):
        self.folder, self.stacked = folder, stacked

    def add(self, utt_id: str, layers: np.ndarray) -> None:
        targets = [(self.folder / f"{utt_id}.npy", layers)] if self.stacked else [
            (self.folder / f"layer_{layer}" / f"{utt_id}.npy", layers[layer]) for layer in range(NUM_LAYERS)]
        for path, array in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, array)

    def close(self) -> None:
        pass


class LhotseCorpus:
    def __init__(self, folder: Path, storage: str):
        from lhotse.features.io import LilcomChunkyWriter, NumpyHdf5Writer

        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.lossy = folder, storage == "lilcom_chunky"
        writer = LilcomChunkyWriter if self.lossy else NumpyHdf5Writer
        self.writers = [writer(folder / f"layer_{layer}") for layer in range(NUM_LAYERS)]
        self.keys = {}

    def add(self, utt_id: str, layers: np.ndarray) -> None:
        keys = []
        for writer, array in zip(self.writers, layers):
            keys.append(writer.write(utt_id, array.astype(np.float32) if self.lossy else array))
        self.keys[utt_id] = keys

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        paths = [writer.storage_path for writer in self.writers]
        (self.folder / "keys.json").write_text(json.dumps({"paths": paths, "keys": self.keys}))


class KaldiCorpus:
    def __init__(self, folder: Path):
        import kaldiio

        self.writers = []
        for layer in range(NUM_LAYERS):
            (folder / f"layer_{layer}").mkdir(parents=True, exist_ok=True)
            spec = f"ark,scp:{folder}/layer_{layer}/feats.ark,{folder}/layer_{layer}/feats.scp"
            self.writers.append(kaldiio.WriteHelper(spec))

    def add(self, utt_id: str, layers: np.ndarray) -> None:
        for writer, array in zip(self.writers, layers):
            writer(utt_id, array.astype(np.float32))

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


WRITERS = {
    "lebench": LebenchCorpus,
    "npy": NpyCorpus,
    "npy-stacked": lambda folder: NpyCorpus(folder, stacked=True),
    "numpy_hdf5": lambda folder: LhotseCorpus(folder, "numpy_hdf5"),
    "lilcom_chunky": lambda folder: LhotseCorpus(folder, "lilcom_chunky"),
    "kaldi": KaldiCorpus,
}


# ---- readers: (utterance id, layer indices) -> [layers, frames, width] ------------------------

def lebench_reader(folder: Path, verify: bool = True):
    from lebench_cli.reading.store import open_features

    return lebench_reader_of(open_features(folder, verify=verify))


def lebench_reader_of(store):
    def read(utt_id: str, layers: list) -> np.ndarray:
        return store.read(utt_id, list(layers))  # [layers, frames, width], each layer read once
    return read


def npy_reader(folder: Path):
    return lambda utt_id, layers: np.stack([np.load(folder / f"layer_{layer}" / f"{utt_id}.npy") for layer in layers])


def npy_stacked_reader(folder: Path):
    def read(utt_id: str, layers: list) -> np.ndarray:
        array = np.load(folder / f"{utt_id}.npy", mmap_mode="r")
        return np.array(array) if len(layers) == NUM_LAYERS else np.ascontiguousarray(array[layers])
    return read


def lhotse_reader(storage: str):
    def make(folder: Path):
        from lhotse.features.io import get_reader

        described = json.loads((folder / "keys.json").read_text())
        readers = [get_reader(storage)(path) for path in described["paths"]]
        keys = described["keys"]
        return lambda utt_id, layers: np.stack([readers[layer].read(keys[utt_id][layer]) for layer in layers])
    return make


def kaldi_reader(folder: Path):
    import kaldiio

    tables = [kaldiio.load_scp(str(folder / f"layer_{layer}" / "feats.scp")) for layer in range(NUM_LAYERS)]
    return lambda utt_id, layers: np.stack([tables[layer][utt_id] for layer in layers])


READERS = {"lebench": lebench_reader, "npy": npy_reader, "npy-stacked": npy_stacked_reader,
           "numpy_hdf5": lhotse_reader("numpy_hdf5"), "lilcom_chunky": lhotse_reader("lilcom_chunky"),
           "kaldi": kaldi_reader}


# ---- one case, in its own process ---------------------------------------------------------------

class ReadDataset:
    """torch Dataset: item i is utterance ids[i]'s selected layers as a tensor."""

    def __init__(self, name: str, folder: Path, ids: list, layers: list, verify: bool = True):
        self.name, self.folder, self.ids, self.layers = name, folder, ids, layers
        self.verify = verify  # lebench only: reads checked against their checksums
        self._read = None  # opened in the process that reads (a DataLoader worker)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        import torch

        if self._read is None:
            self._read = (lebench_reader(self.folder, self.verify) if self.name == "lebench"
                          else READERS[self.name](self.folder))
        return torch.from_numpy(self._read(self.ids[index], self.layers))


def batches(frames: list, budget_frames: int, seed: int) -> list:
    """Random order, cut into batches of at most budget_frames frames."""
    order = np.random.default_rng(seed).permutation(len(frames))
    out, batch, total = [], [], 0
    for index in order:
        if batch and total + frames[index] > budget_frames:
            out.append(batch)
            batch, total = [], 0
        batch.append(int(index))
        total += frames[index]
    return out + ([batch] if batch else [])


def run_case(spec: dict) -> dict:
    import torch

    for module in ("h5py", "kaldiio", "lhotse.features.io", "lebench_cli.reading.store"):  # imports are not what is timed
        importlib.import_module(module)

    torch.set_num_threads(1)
    frames, work = spec["frames"], Path(spec["work"])
    ids = [f"spk{index % 10}/utt{index:05d}" for index in range(len(frames))]
    layers = spread_layers(spec["layers"])
    dataset, collate = case_dataset(spec, work / spec["format"], ids, layers)
    sampler = batches(frames, int(spec["batch_seconds"] * FRAME_RATE), spec["seed"])
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=spec["workers"],
                                         collate_fn=collate, persistent_workers=spec["workers"] > 0)
    consume(loader, spec["touch"])  # untimed: workers started, files and indexes opened, as in any epoch after the first
    seconds, passes, delivered = 0.0, 0, 0
    while not passes or seconds < spec["min_seconds"] or (spec["cache"] == "cold" and passes < 3):
        if spec["cache"] == "cold":
            empty_page_cache(work / spec["format"], spec["cold_method"])
        started = time.perf_counter()
        delivered += consume(loader, spec["touch"])
        seconds += time.perf_counter() - started
        passes += 1
    return {"utterances": len(ids), "passes": passes, "seconds": seconds, "utt_per_s": passes * len(ids) / seconds,
            "mb_per_s": delivered / seconds / 1e6}


def case_dataset(spec: dict, folder: Path, ids: list, layers: list) -> tuple:
    """(dataset, collate_fn) of one case: what a user of the format would write."""
    verify = spec.get("verify", True)
    if spec["collate"] == "list":
        return ReadDataset(spec["format"], folder, ids, layers, verify), list
    if spec["format"] == "lebench":
        from lebench_cli.reading.dataset import FeatureDataset
        from lebench_cli.reading.store import open_features

        dataset = FeatureDataset(open_features(folder, verify=verify), layers=layers, dtype="float16", ids=ids)
        return dataset, dataset.collate
    return ReadDataset(spec["format"], folder, ids, layers, verify), pad_items


def pad_items(items: list):
    from lebench_cli.reading.batches import collate_features

    return collate_features([(None, item) for item in items])


def consume(loader, touch: bool = False) -> int:
    """Bytes of float16 features delivered in one pass (padding not counted)."""
    total = 0
    for batch in loader:
        if isinstance(batch, list):
            total += sum(item.shape[0] * item.shape[1] * item.shape[2] * 2 for item in batch)
            tensors = batch
        else:  # a FeatureBatch [batch, layers, frames_max, width]
            total += int(batch.lengths.sum()) * batch.features.shape[1] * batch.features.shape[3] * 2
            tensors = [batch.features]
        if touch:
            sum(float(tensor.reshape(-1)[::2048].float().sum()) for tensor in tensors)  # float16: 2048 values a page
    return total


def spread_layers(count: int) -> list:
    """count layers spread over 0..24 (1: the middle one; 3: 8, 12, 24 -like spread)."""
    if count == NUM_LAYERS:
        return list(range(NUM_LAYERS))
    if count == 1:
        return [12]
    return sorted({int(round(value)) for value in np.linspace(6, NUM_LAYERS - 1, count)})


def cold_method(requested: str) -> str:
    if requested != "auto":
        return requested
    return "drop" if os.access("/proc/sys/vm/drop_caches", os.W_OK) else "fadvise"


def empty_page_cache(folder: Path, method: str) -> None:
    if method == "drop":
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return
    for path in folder.rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


# ---- the run --------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    frames = utterance_frames(args.gb, args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(args.work, frames, args.format_list, args.seed)
    if args.breakdown:
        return breakdown(args.work / "lebench")
    if args.check_cost:
        return check_cost(args.work / "lebench", args.layer_counts, 3 if args.quick else 7)
    formats = [name for name in args.format_list if name in corpus["formats"]]
    skipped = [name for name in args.format_list if name not in formats]
    method = cold_method(args.cold)
    seconds = sum(frames) / FRAME_RATE
    header = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores", "python": platform.python_version(), "utterances": len(frames),
        "audio_hours": round(seconds / 3600, 3), "store_gb": round(sum(frames) * NUM_LAYERS * WIDTH * 2 / 1e9, 3),
        "disk_gb": {name: round(folder_bytes(args.work / name) / 1e9, 3) for name in formats},
        "cold_method": method, "batch_seconds": args.batch_seconds, "command": " ".join(sys.argv),
    }
    print(json.dumps(header, indent=1), file=sys.stderr)
    if skipped:
        print(f"skipped (not installed): {', '.join(skipped)} (lilcom_chunky needs `pip install lilcom`)",
              file=sys.stderr)
    rows = []
    for cache in [name for name in ("warm", "cold") if name in args.cache.split(",")]:
        for layers in args.layer_counts:
            for workers in args.worker_counts:
                group = []
                for name in formats:
                    spec = {"format": name, "layers": layers, "workers": workers, "cache": cache, "frames": frames,
                            "work": str(args.work), "batch_seconds": args.batch_seconds, "seed": args.seed,
                            "cold_method": method, "min_seconds": 0 if args.quick else args.min_seconds,
                            "touch": args.touch, "collate": args.collate}
                    result = run_case(spec) if args.quick else run_child(spec)
                    if name == "lebench":
                        spec = {**spec, "verify": False}
                        unchecked = run_case(spec) if args.quick else run_child(spec)
                        result["unchecked_utt_per_s"] = unchecked["utt_per_s"]
                        result["check_cost"] = unchecked["utt_per_s"] / result["utt_per_s"] - 1
                    group.append({"format": name, "cache": cache, "layers": layers, "workers": workers, **result})
                best_peer = max(row["utt_per_s"] for row in group if row["format"] != "lebench") if len(group) > 1 else None
                for row in group:
                    row["vs_best_peer"] = row["utt_per_s"] / best_peer if best_peer else None
                    print_row(row, first=not rows)
                    rows.append(row)
    if args.json_out:
        write_json(args.json_out, {**header, "rows": rows}, indent=1)
    return 0


def run_child(spec: dict) -> dict:
    completed = subprocess.run([sys.executable, "-m", "benchmarks.bench_read", "--case", json.dumps(spec)],
                               capture_output=True, cwd=REPO, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                   filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    if completed.returncode != 0:
        raise SystemExit(f"{spec['format']} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.splitlines()[-1])


def print_row(row: dict, first: bool) -> None:
    if first:
        print(f"{'cache':<5} {'layers':>6} {'workers':>7} {'format':<13} {'utt/s':>8} {'MB/s':>8} {'vs best peer':>12}"
              f" {'check cost':>10}")
    ratio = "-" if row["vs_best_peer"] is None else f"{row['vs_best_peer']:.2f}"
    cost = f"{row['check_cost']:+.1%}" if "check_cost" in row else "-"
    print(f"{row['cache']:<5} {row['layers']:>6} {row['workers']:>7} {row['format']:<13} "
          f"{row['utt_per_s']:>8.1f} {row['mb_per_s']:>8.0f} {ratio:>12} {cost:>10}", flush=True)


def check_cost(folder: Path, layer_counts: list, rounds: int) -> int:
    """Seconds per warm pass over every utterance in random order, read() checked against its
    checksums and not, the two alternating round after round (so that a loaded machine slows
    both alike); the best round of each, and how much longer the checked one took: in wall
    seconds, and in this process's CPU seconds (user + system), which a shared machine's
    other processes disturb far less (they take the CPU away, they do not add to it)."""
    from lebench_cli.reading.store import open_features

    stores = {verify: open_features(folder, verify=verify) for verify in (True, False)}
    ids = list(stores[True].ids)
    order = [ids[index] for index in np.random.default_rng(0).permutation(len(ids))]
    print(f"{'layers':>6} {'checked s':>10} {'unchecked s':>12} {'check cost':>10} "
          f"{'checked cpu s':>14} {'unchecked cpu s':>16} {'cpu cost':>9}")
    for count in layer_counts:
        layers = spread_layers(count)
        wall = {True: float("inf"), False: float("inf")}
        cpu = dict(wall)
        for _ in range(rounds):
            for verify, store in stores.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                for utt_id in order:
                    store.read(utt_id, layers)
                wall[verify] = min(wall[verify], time.perf_counter() - started)
                cpu[verify] = min(cpu[verify], time.process_time() - started_cpu)
        print(f"{count:>6} {wall[True]:>10.3f} {wall[False]:>12.3f} {wall[True] / wall[False] - 1:>+10.1%} "
              f"{cpu[True]:>14.3f} {cpu[False]:>16.3f} {cpu[True] / cpu[False] - 1:>+9.1%}", flush=True)
    return 0


def breakdown(folder: Path) -> int:
    """ms per utterance, best of 5 warm passes in random order: the public read() against the
    same rows read from h5py Dataset objects made once, the lookups alone, and a numpy copy."""
    import h5py

    from lebench_cli.reading.store import open_features

    store = open_features(folder)
    order = np.random.default_rng(0).permutation(len(store))
    shard = h5py.File(store._shards[0], "r", locking=False)  # the corpus is one shard
    offsets, frames = shard["offsets"][:], store._frames

    def per_utterance(read) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for index in order:
                read(index)
            best = min(best, time.perf_counter() - started)
        return best / len(order) * 1e3

    print(f"{'layers':>6} {'store.read':>10} {'made-once datasets':>18} {'lookups':>8} {'numpy copy':>10}  (ms per utterance)")
    for layers in (spread_layers(1), spread_layers(NUM_LAYERS)):
        datasets = [shard[f"layers/{layer}/frames"] for layer in layers]
        public = per_utterance(lambda index: lebench_reader_of(store)(store.ids[index], layers))
        cached = per_utterance(lambda index: np.stack([d[offsets[index]:offsets[index] + frames[index]] for d in datasets]))
        lookups = per_utterance(lambda index: [shard[f"layers/{layer}/frames"] for layer in layers])
        copy = per_utterance(lambda index: np.empty((len(layers), frames[index], WIDTH), np.float16).copy())
        print(f"{len(layers):>6} {public:>10.2f} {cached:>18.2f} {lookups:>8.2f} {copy:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
