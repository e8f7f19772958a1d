"""A real S3 API for tests: moto's server (``moto[server]``, no JVM, no Docker) on 127.0.0.1.

``s3`` starts one server for the session and points this process's AWS environment at it (fake
keys, endpoint, region); ``s3_bucket`` gives each test a fresh, empty bucket as an ``s3://`` URI.
A Ray worker needs the same environment: pass ``runtime_env={"env_vars": s3.env}``.

Import the fixtures into a test module (conftest.py is not ours to edit)::

    from fixtures_s3 import s3, s3_bucket  # noqa: F401
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field

import pytest

import teardown

REGION = "us-east-1"
# Every AWS variable the storage layer or the AWS SDK reads, so a developer's own settings never
# leak into a test: those not in the fake environment are removed.
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_EC2_METADATA_DISABLED",
)


@dataclass
class S3Server:
    """The running moto server: its endpoint and the environment that reaches it."""

    endpoint: str
    env: dict[str, str] = field(default_factory=dict)

    def filesystem(self, **kwargs):
        """A pyarrow S3FileSystem on this server (the tests' own admin handle)."""
        import pyarrow.fs as pafs

        host = self.endpoint.split("://", 1)[1]
        return pafs.S3FileSystem(endpoint_override=host, scheme="http", region=REGION, **kwargs)

    def new_bucket(self) -> str:
        """Create an empty bucket with a fresh name; return its ``s3://`` URI."""
        name = f"spladeray-test-{uuid.uuid4().hex[:10]}"
        self.filesystem(allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}"

    def boto3_client(self, service: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def enforce_auth(self, on: bool) -> None:
        """Make moto check signatures and IAM policies (off by default: it accepts anything)."""
        import urllib.request

        count = b"0" if on else b"inf"
        req = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=count,
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()


@pytest.fixture(scope="session")
def s3():
    """One moto S3 server on 127.0.0.1 (a free port) for the session, with the AWS environment
    of this process pointed at it: fake keys, ``AWS_ENDPOINT_URL``, region, no EC2 metadata."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/spladeray-test/credentials",
        "AWS_CONFIG_FILE": "/nonexistent/spladeray-test/config",
    }
    with pytest.MonkeyPatch.context() as mp:
        for var in AWS_VARS:
            mp.delenv(var, raising=False)
        for var, value in env.items():
            mp.setenv(var, value)
        yield S3Server(endpoint=endpoint, env=env)
    teardown.bounded("moto server stop", server.stop)


@pytest.fixture
def s3_bucket(s3: S3Server) -> str:
    """A fresh, empty bucket on the session's moto server, as ``s3://<name>``."""
    return s3.new_bucket()


@pytest.fixture
def s3_read_only(s3: S3Server, s3_bucket: str):
    """Keys of an IAM user that may only read ``s3_bucket``, with moto enforcing policies.

    Yields the environment variables to set (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).
    While this fixture is active, the default test keys are refused.
    """
    bucket = s3_bucket.removeprefix("s3://")
    iam = s3.boto3_client("iam")
    user = f"reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                # AWS authorises HeadBucket as s3:ListBucket; moto asks for s3:HeadBucket
                "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    iam.put_user_policy(UserName=user, PolicyName="read-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    s3.enforce_auth(True)
    try:
        yield {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
    finally:
        s3.enforce_auth(False)
