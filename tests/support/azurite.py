"""Azurite through the real Azure Storage client (azure-storage-blob), for the replica tests:
`create CONTAINER` makes a container, `overwrite CONTAINER BLOB FILE` replaces a blob's bytes
(as someone with write access to the storage account could), `list CONTAINER` prints the blob
names. The endpoint is TOLLGATE_TEST_AZURITE; the account is Azurite's well-known dev account."""

import os
import sys

from azure.storage.blob import BlobServiceClient

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def client():
    endpoint = os.environ["TOLLGATE_TEST_AZURITE"].rstrip("/") + "/" + ACCOUNT
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint={endpoint};"
    )
    return BlobServiceClient.from_connection_string(conn)


def main():
    cmd, container = sys.argv[1], sys.argv[2]
    svc = client()
    if cmd == "create":
        svc.create_container(container)
    elif cmd == "overwrite":
        with open(sys.argv[4], "rb") as f:
            svc.get_blob_client(container, sys.argv[3]).upload_blob(f, overwrite=True)
    elif cmd == "list":
        for b in svc.get_container_client(container).list_blobs():
            print(b.name)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
