"""Local object-store servers for the storage-backend tests (all on 127.0.0.1, free ports).

* ``servers.azurite.AzuriteServer``: azurite's Blob service (npm; ``npm ci`` in the repo root)
  for ``az://`` / ``abfs://`` through adlfs.
* ``servers.gcs.GCSEmulator``: gcp-storage-emulator in a thread, for ``gs://`` through gcsfs;
  ``preconditions=True`` makes uploads honour ``ifGenerationMatch`` like GCS.

The submodules are imported on demand so that one backend's test tools are not needed for the
other's tests. ``servers.gcs`` must be imported (or ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``
set) before anything imports gcsfs.
"""
