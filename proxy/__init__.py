"""aspose-cloud-proxy: a local reverse proxy that authenticates calls to Aspose Cloud."""

__version__ = "0.2.0"
