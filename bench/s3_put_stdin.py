"""The upload half of the one-liner a user would write instead of pgops for S3: read stdin and hand it to boto3's
managed transfer (`upload_fileobj`, multipart with its default 8 MiB parts), which is what `aws s3 cp - s3://...`
does. bench/run.py times `pg_dump -Fc -Z0 | zstd -3 -T2 | python -m bench.s3_put_stdin s3://bucket/key` against
the same emulator as pgops, as the fair anchor of the s3:// row.

Endpoint and credentials come from the PGOPS_S3_* variables of bench/objstore.py's MotoServer.env(), so both sides
talk to the emulator the same way (path-style addressing, the same region)."""

from __future__ import annotations

import os
import sys

import boto3
from botocore.config import Config


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].startswith("s3://") or "/" not in argv[1][5:]:
        print("usage: python -m bench.s3_put_stdin s3://<bucket>/<key>  (stdin is uploaded)", file=sys.stderr)
        return 2
    bucket, key = argv[1][5:].split("/", 1)
    client = boto3.client(
        "s3",
        endpoint_url=os.environ["PGOPS_S3_ENDPOINT_URL"],
        aws_access_key_id=os.environ["PGOPS_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["PGOPS_S3_SECRET_ACCESS_KEY"],
        region_name=os.environ["PGOPS_S3_REGION"],
        config=Config(s3={"addressing_style": "path"}),
    )
    client.upload_fileobj(sys.stdin.buffer, bucket, key)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
