"""site-backup: back up a directory tree to Azure Blob Storage with Prefect.

The plain, orchestrator-free logic lives here; `tasks/` wraps it in Prefect tasks and
`flows/` wires those together.
"""

__version__ = "0.1.0"  # as in pyproject.toml; sent in the User-Agent of storage requests

# Part of every checkpoint key: bump it when what a finished batch means changes
# (blob naming, metadata, integrity rules), so old checkpoints stop matching.
CHECKPOINT_VERSION = "2"  # 2: names encoded as rclone does for Azure Blob
