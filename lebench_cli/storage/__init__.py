"""The output folder: HDF5 shards written one part at a time, their index, locks and failure
records (docs/format.md is the contract). One module per concern:

- layout: file names, shard tables, committed shards, index lines;
- folder: creating an output folder, or checking it holds the same run;
- locks: one writer per part, none while --overwrite empties the folder, one export per destination;
- utterance: what the writer takes, and its options;
- buffers, streaming, tables and writer: the shard writer;
- checksums and identity: what a shard records to check itself and tell its run;
- verify: `lebench verify`, every shard read and checked, damaged ones moved aside;
- failures: the files a run could not use;
- files: atomic writes and the OS's words for a failed write.
"""

from .failures import FailureLog, read_failures
from .files import fsync_path, write_atomic
from .folder import (REMOVING_DIR, check_same_run, check_writable_destination, prepare_output, remove_store,
                     require_writable_folder, writing_part)
from .layout import (CNN_LAYER, FORMAT, FORMAT_VERSION, INDEX_HEADER, METADATA_FILE, SAVE_DTYPES, SHARDS_DIR,
                     STORE_FILES, ShardName, ShardTable, StoredSource, committed_shards, open_h5, part_tag,
                     read_shard_table, stored_ids, stored_sources)
from .locks import STORE_LOCK, PartLock, StoreLock, lock_holder, lock_key
from .utterance import StoredUtterance, WriterOptions, compression_options
from .writer import ShardWriter, WriterStats

__all__ = [
    "CNN_LAYER", "check_same_run", "check_writable_destination", "FORMAT", "FORMAT_VERSION", "INDEX_HEADER", "METADATA_FILE", "SAVE_DTYPES", "SHARDS_DIR",
    "STORE_FILES", "StoredSource", "FailureLog", "PartLock", "ShardName", "ShardTable", "ShardWriter", "StoredUtterance",
    "WriterOptions", "WriterStats", "committed_shards", "compression_options", "fsync_path", "lock_key",
    "open_h5", "part_tag", "prepare_output", "read_failures", "read_shard_table", "remove_store",
    "require_writable_folder", "stored_ids", "stored_sources", "write_atomic", "lock_holder",
    "REMOVING_DIR", "STORE_LOCK", "StoreLock", "writing_part",
]
