"""pgops: streaming logical backups of PostgreSQL to S3, GCS or a local directory."""

__version__ = "0.1.0"
