"""PGOPS_S3_MAX_ATTEMPTS means what the docs say: that many requests per request or part, in all.

Retries are one layer (pgops' own, which logs each retry and stops waiting on SIGTERM), not botocore's
inside ours. Every request of one kind is answered with a TCP reset by the FaultProxy in front of moto,
and the requests that reach the proxy are counted.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest

from pgops.errors import StorageError
from pgops.settings import build_settings
from pgops.storage import open_storage
from pgops.storage.s3 import S3Storage
from tests.fixtures.objstore import Fault, FaultProxy, s3_env

MiB = 1024**2
Matcher = Callable[[str, str], bool]


def _is(method: str, pattern: str) -> Matcher:
    return lambda m, p: m == method and re.search(pattern, p) is not None


def _stream(storage: S3Storage) -> None:
    writer = storage.open_writer("big")
    try:
        writer.write(b"x" * (6 * MiB))  # more than one 5 MiB part: a multipart upload
        writer.commit()
    finally:
        writer.abort()


@dataclasses.dataclass(frozen=True)
class Case:
    what: str
    fails: Matcher  # the requests that are reset
    action: Callable[[S3Storage], object]  # what pgops does
    existing: tuple[str, ...] = ()  # objects written first


CASES = [
    Case("HeadBucket", _is("HEAD", r"^/[^/?]+/?$"), lambda s: s.check()),
    Case("PutObject", _is("PUT", r"/backups/small$"), lambda s: s.put_bytes("small", b"x")),
    Case("HeadObject", _is("HEAD", r"/backups/small$"), lambda s: s.put_bytes("small", b"x")),
    Case("GetObject", _is("GET", r"/backups/there$"), lambda s: s.get_bytes("there"), ("there",)),
    Case("ListObjectsV2", _is("GET", r"list-type=2"), lambda s: list(s.list(""))),
    Case("DeleteObject", _is("DELETE", r"/backups/there$"), lambda s: s.delete("there"), ("there",)),
    Case("CreateMultipartUpload", _is("POST", r"/backups/big\?uploads"), _stream),
    Case("UploadPart", _is("PUT", r"/backups/big\?.*partNumber=1"), _stream),
]


@pytest.mark.parametrize("attempts", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_s3_max_attempts_is_the_number_of_requests(
    fault_proxy: FaultProxy, s3_bucket: str, attempts: int, case: Case
) -> None:
    env = s3_env(fault_proxy.endpoint, s3_bucket, S3_MAX_ATTEMPTS=str(attempts))
    storage = open_storage(build_settings(environ=env))
    assert isinstance(storage, S3Storage)
    for key in case.existing:
        storage.put_bytes(key, b"data")
    fault = fault_proxy.add_fault(Fault(case.fails, times=None))  # every such request is reset
    with pytest.raises(StorageError) as err:
        case.action(storage)
    assert "\n" not in str(err.value)
    sent = [e for e in fault_proxy.snapshot() if case.fails(e.method, e.path)]
    assert fault.fired == len(sent) == attempts, (case.what, [(e.method, e.path) for e in sent])
