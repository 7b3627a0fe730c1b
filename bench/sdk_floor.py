"""The floor for Python against this storage: a plain azure-storage-blob upload of every
file under ROOT with a 16-thread pool, no comparison, no MD5, no orchestration.

    python bench/sdk_floor.py ROOT CONTAINER   (storage from AZURE_STORAGE_CONNECTION_STRING)
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import requests
from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient


def main(root: str, container_name: str) -> None:
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))
    service = BlobServiceClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"], transport=RequestsTransport(session=session, session_owner=False)
    )
    container = service.get_container_client(container_name)
    try:
        container.create_container()
    except ResourceExistsError:
        pass
    paths = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]

    def upload(path: str) -> int:
        with open(path, "rb") as f:
            container.upload_blob(os.path.relpath(path, root), f, overwrite=True, max_concurrency=4)
        return os.path.getsize(path)

    with ThreadPoolExecutor(max_workers=16) as pool:
        total = sum(pool.map(upload, paths))
    print(f"{len(paths)} files, {total} bytes")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
