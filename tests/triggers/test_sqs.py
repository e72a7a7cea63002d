"""SqsSource against a real moto_server through the real boto3 client."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from pcapd.core.config import SqsConfig
from pcapd.core.request import RequestError, decode_body
from pcapd.core.secret import Secret
from tests.helpers import stop_process, wait_for
from tests.triggers.conftest import REGION, TEST_KEY_ID, TEST_SECRET, MotoServer
from tests.triggers.consumer import Consumer
from triggers.base import TriggerSource
from triggers.sqs import SqsSource
from triggers.sqs_client import endpoint_from_url, make_client, region_from_url, unwrap_sns

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient

REQUEST = b'{"node": "any", "interface": ["lo"], "id": "r1"}'


def sqs_config(server: MotoServer, url: str, **overrides: Any) -> SqsConfig:
    options: dict[str, Any] = {
        "listen": True,
        "region": REGION,
        "accessid": TEST_KEY_ID,
        "accesskey": Secret(TEST_SECRET),
        "url": url,
        "endpoint": server.endpoint,
        "waitseconds": 1,
        "chunksize": 10,
        "visibility_timeout": 30,
    }
    options.update(overrides)
    return SqsConfig(**options)


def counts(client: SQSClient, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of the queue."""
    attrs = client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


def counting_factory(event: str, seen: list[dict[str, Any]]) -> Callable[[SqsConfig], SQSClient]:
    """The production client, with a botocore hook noting each ReceiveMessage."""

    def factory(config: SqsConfig) -> SQSClient:
        client = make_client(config)

        def note(**kwargs: Any) -> None:
            seen.append(dict(kwargs.get("params") or {}))

        client.meta.events.register(f"{event}.sqs.ReceiveMessage", note)
        return client

    return factory


def test_delivers_body_and_deletes_only_after_ack(moto_sqs: MotoServer) -> None:
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    client.send_message(QueueUrl=url, MessageBody=REQUEST.decode())
    consumer = Consumer(SqsSource(sqs_config(moto_sqs, url)))
    try:
        delivery = consumer.take()
        assert delivery.body == REQUEST
        assert delivery.source == "sqs"
        assert delivery.message_id
        assert counts(client, url) == (0, 1), "received but not acked: still in the queue"
        delivery.ack()
        wait_for(lambda: counts(client, url) == (0, 0))
        delivery.ack()  # a second ack is a no-op, not an error
        delivery.release()
    finally:
        consumer.close()


def test_unacked_message_comes_back_after_the_consumer_is_killed(moto_sqs: MotoServer) -> None:
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    client.send_message(QueueUrl=url, MessageBody=REQUEST.decode())
    script = (
        "import sys, threading\n"
        "from pcapd.core.config import SqsConfig\n"
        "from pcapd.core.secret import Secret\n"
        "from triggers.sqs import SqsSource\n"
        "cfg = SqsConfig(listen=True, region=sys.argv[1], accessid=sys.argv[2],\n"
        "    accesskey=Secret(sys.argv[3]), url=sys.argv[4], endpoint=sys.argv[5],\n"
        "    waitseconds=1, visibility_timeout=2)\n"
        "for d in SqsSource(cfg).deliveries(threading.Event()):\n"
        "    print(d.body.decode(), flush=True)\n"
        "    threading.Event().wait()\n"  # mid-capture, never acks
    )
    args = [REGION, TEST_KEY_ID, TEST_SECRET, url, moto_sqs.endpoint]
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == REQUEST
        time.sleep(2.5)  # past visibility_timeout: the subprocess's heartbeat holds it
        assert counts(client, url) == (0, 1)
        proc.kill()
        proc.wait()
        killed = time.monotonic()
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    assert counts(client, url) == (0, 1), "still invisible right after the crash"
    consumer = Consumer(SqsSource(sqs_config(moto_sqs, url)))
    try:
        delivery = consumer.take()
        assert delivery.body == REQUEST
        assert time.monotonic() - killed > 1.0, "it waited for the visibility timeout"
        delivery.ack()
        wait_for(lambda: counts(client, url) == (0, 0))
    finally:
        consumer.close()


def test_abandoned_generator_leaves_message_to_reappear(moto_sqs: MotoServer) -> None:
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    client.send_message(QueueUrl=url, MessageBody=REQUEST.decode())
    source = SqsSource(sqs_config(moto_sqs, url, visibility_timeout=1))
    deliveries = source.deliveries(threading.Event())
    assert next(deliveries).body == REQUEST
    source.close()  # as if the process died: no heartbeat, no release
    deliveries.close()
    assert counts(client, url) == (0, 1)
    wait_for(lambda: counts(client, url) == (1, 0), timeout=5)


def test_heartbeat_keeps_message_invisible_past_visibility_timeout(moto_sqs: MotoServer) -> None:
    client = moto_sqs.client()
    url = moto_sqs.new_queue(visibility=2)
    client.send_message(QueueUrl=url, MessageBody=REQUEST.decode())
    consumer = Consumer(SqsSource(sqs_config(moto_sqs, url, visibility_timeout=2)))
    try:
        delivery = consumer.take()
        deadline = time.monotonic() + 4.5  # more than two visibility timeouts
        while time.monotonic() < deadline:
            stolen = client.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", [])
            assert not stolen, "the message became visible while its capture ran"
            time.sleep(0.2)
        assert counts(client, url) == (0, 1)
        delivery.ack()
        wait_for(lambda: counts(client, url) == (0, 0))
    finally:
        consumer.close()


def test_extend_sets_a_longer_visibility(moto_sqs: MotoServer) -> None:
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    client.send_message(QueueUrl=url, MessageBody=REQUEST.decode())
    source = SqsSource(sqs_config(moto_sqs, url, visibility_timeout=1))
    deliveries = source.deliveries(threading.Event())
    delivery = next(deliveries)
    delivery.extend(4)
    source.close()  # no heartbeat from here: only the extension holds it
    deliveries.close()
    time.sleep(2.0)
    assert counts(client, url) == (0, 1)
    wait_for(lambda: counts(client, url) == (1, 0), timeout=5)


def test_message_for_another_node_is_released_and_taken_by_it(moto_sqs: MotoServer) -> None:
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    client.send_message(QueueUrl=url, MessageBody=REQUEST.decode())
    config = sqs_config(moto_sqs, url, not_for_me="release")
    web1 = Consumer(SqsSource(config))
    try:
        delivery = web1.take()
        assert counts(client, url) == (0, 1)
        web1.close()  # web1 takes nothing more; web2 reads the same queue
        web2 = Consumer(SqsSource(config))
        try:
            # visibility_timeout is 30 s: only the release can show it to web2 now
            assert delivery.not_for_me is not None
            delivery.not_for_me()  # as the controller calls it
            started = time.monotonic()
            taken = web2.take()
            assert taken.body == REQUEST and time.monotonic() - started < 5
            delivery.ack()  # after a release the message is no longer web1's to delete
            assert counts(client, url) == (0, 1)
            taken.ack()
            wait_for(lambda: counts(client, url) == (0, 0))
        finally:
            web2.close()
    finally:
        web1.close()


def test_not_for_me_delete_with_one_queue_per_node(moto_sqs: MotoServer) -> None:
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    client.send_message(QueueUrl=url, MessageBody=REQUEST.decode())
    consumer = Consumer(SqsSource(sqs_config(moto_sqs, url, not_for_me="delete")))
    try:
        delivery = consumer.take()
        assert delivery.not_for_me is not None
        delivery.not_for_me()  # as the controller calls it
        wait_for(lambda: counts(client, url) == (0, 0))
    finally:
        consumer.close()


def test_receives_only_as_many_as_free_slots(moto_sqs: MotoServer) -> None:
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    for n in range(5):
        client.send_message(QueueUrl=url, MessageBody=f'{{"id": "m{n}"}}')
    slots = [0]
    calls: list[dict[str, Any]] = []
    source = SqsSource(
        sqs_config(moto_sqs, url),
        counting_factory("provide-client-params", calls),
        free_slots=lambda: slots[0] - source.in_flight(),
    )
    consumer = Consumer(source)
    try:
        time.sleep(0.5)
        assert calls == [], "no free slot: no receive at all"
        assert counts(client, url) == (5, 0)
        slots[0] = 2
        first = [consumer.take(), consumer.take()]
        time.sleep(0.5)
        assert consumer.got.empty(), "two slots, two messages in flight"
        assert counts(client, url) == (3, 2)
        assert all(call["MaxNumberOfMessages"] <= 2 for call in calls)
        first[0].ack()
        third = consumer.take()
        assert third.body not in {d.body for d in first}
        assert all(call["MaxNumberOfMessages"] <= 2 for call in calls)
    finally:
        consumer.close()


def test_chunksize_caps_each_receive(moto_sqs: MotoServer) -> None:
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    for n in range(7):
        client.send_message(QueueUrl=url, MessageBody=f'{{"id": "m{n}"}}')
    calls: list[dict[str, Any]] = []
    source = SqsSource(
        sqs_config(moto_sqs, url, chunksize=3), counting_factory("provide-client-params", calls)
    )
    consumer = Consumer(source)
    try:
        bodies = {consumer.take().body for _ in range(7)}
        assert len(bodies) == 7
        assert calls and all(call["MaxNumberOfMessages"] == 3 for call in calls)
    finally:
        consumer.close()


def backoff_run(
    server: MotoServer, config: SqsConfig, seconds: float
) -> tuple[list[dict[str, Any]], SqsSource]:
    """A source receiving for `seconds`, and on until two receives came back
    (a loaded machine can take seconds over the first): the HTTP requests
    whose answers came back, and the source."""
    sent: list[dict[str, Any]] = []  # HTTP requests, botocore retries included
    answered: list[dict[str, Any]] = []  # receive calls that came back
    counted = counting_factory("before-send", sent)

    def factory(config: SqsConfig) -> SQSClient:
        client = counted(config)
        client.meta.events.register(
            "after-call.sqs.ReceiveMessage", lambda **_: answered.append({})
        )
        return client

    source = SqsSource(config, factory, backoff_initial=0.2, backoff_max=0.8)
    consumer = Consumer(source)
    time.sleep(seconds)
    wait_for(lambda: len(answered) >= 2, timeout=30)
    consumer.close()
    # The stop abandons a call in flight (on a loaded machine one often is):
    # it has no outcome to count. Every other request came back.
    assert len(sent) - len(answered) in (0, 1), (len(sent), len(answered))
    return sent[: len(answered)], source


def receive_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        caplog.handler.format(r) for r in caplog.records if r.getMessage() == "sqs_receive_failed"
    ]


def test_bad_credentials_back_off(
    moto_sqs_auth: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{moto_sqs_auth.endpoint}/123456789012/no-such-queue"
    config = sqs_config(moto_sqs_auth, url, accessid="AKIDBAD", accesskey=Secret("wrong-key"))
    with caplog.at_level(logging.ERROR, logger="triggers.sqs"):
        sent, source = backoff_run(moto_sqs_auth, config, 2.0)
    # Waits of 0.2, 0.4, then 0.8 s, each down to half by the jitter: retries
    # at 0, 0.1-0.2, 0.3-0.6, 0.7-1.4 s, ...; a hot loop would send hundreds.
    assert 2 <= len(sent) <= 7, len(sent)
    assert source.receive_errors == len(sent)
    lines = receive_failures(caplog)
    assert lines, caplog.text
    assert "InvalidClientTokenId" in lines[0]
    assert "check sqs.accessid/sqs.accesskey" in lines[0]
    assert re.search(r" retry_in=0\.(1\d*|2) failures=1$", lines[0]), lines[0]
    assert "wrong-key" not in caplog.text


def test_unknown_queue_backs_off(moto_sqs: MotoServer, caplog: pytest.LogCaptureFixture) -> None:
    url = f"{moto_sqs.endpoint}/123456789012/no-such-queue"
    with caplog.at_level(logging.ERROR, logger="triggers.sqs"):
        sent, _ = backoff_run(moto_sqs, sqs_config(moto_sqs, url), 2.0)
    assert 2 <= len(sent) <= 7, len(sent)
    lines = receive_failures(caplog)
    assert "NonExistentQueue" in lines[0] or "QueueDoesNotExist" in lines[0], lines[0]
    assert "check sqs.url" in lines[0]


def test_recovers_after_errors(moto_sqs: MotoServer, caplog: pytest.LogCaptureFixture) -> None:
    client = moto_sqs.client()
    name = "pcapd-late-queue"
    url = f"{moto_sqs.endpoint}/123456789012/{name}"
    source = SqsSource(sqs_config(moto_sqs, url), backoff_initial=0.1, backoff_max=0.2)
    consumer = Consumer(source)
    try:
        wait_for(lambda: source.receive_errors >= 2)
        real_url = client.create_queue(QueueName=name)["QueueUrl"]
        client.send_message(QueueUrl=real_url, MessageBody=REQUEST.decode())
        with caplog.at_level(logging.INFO, logger="triggers.sqs"):
            assert consumer.take().body == REQUEST
        assert "event=sqs_receiving_again" in caplog.text
    finally:
        consumer.close()


def test_stop_returns_promptly_during_long_poll(moto_sqs: MotoServer) -> None:
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    consumer = Consumer(SqsSource(sqs_config(moto_sqs, url, waitseconds=20)))
    time.sleep(0.5)  # inside a 20 s long poll
    started = time.monotonic()
    consumer.close()
    assert time.monotonic() - started < 1.0
    # A message the abandoned long poll still takes is handed straight back.
    client.send_message(QueueUrl=url, MessageBody=REQUEST.decode())
    wait_for(lambda: counts(client, url) == (1, 0), timeout=5)


def test_sns_fan_out_reaches_every_node_queue(moto_sqs: MotoServer) -> None:
    sqs = moto_sqs.client()
    sns = boto3.client(
        "sns",
        region_name=REGION,
        endpoint_url=moto_sqs.endpoint,
        aws_access_key_id=TEST_KEY_ID,
        aws_secret_access_key=TEST_SECRET,
    )
    topic = sns.create_topic(Name="pcapd-requests")["TopicArn"]
    urls = [moto_sqs.new_queue(), moto_sqs.new_queue()]
    raw = {urls[0]: "false", urls[1]: "true"}  # the envelope is unwrapped either way
    for url in urls:
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=arn["QueueArn"],
            Attributes={"RawMessageDelivery": raw[url]},
        )
    sns.publish(TopicArn=topic, Message=REQUEST.decode())
    consumers = [Consumer(SqsSource(sqs_config(moto_sqs, url))) for url in urls]
    try:
        for consumer in consumers:
            delivery = consumer.take()
            assert delivery.body == REQUEST
            delivery.ack()
    finally:
        for consumer in consumers:
            consumer.close()


def test_unwrap_sns_leaves_other_bodies_alone() -> None:
    envelope = json.dumps({"Type": "Notification", "TopicArn": "arn:x", "Message": "{}"})
    assert unwrap_sns(envelope) == "{}"
    assert unwrap_sns('{"TopicArn": "x", "Type": "Other"}') == '{"TopicArn": "x", "Type": "Other"}'
    assert unwrap_sns('"TopicArn" not json') == '"TopicArn" not json'
    assert unwrap_sns(REQUEST.decode()) == REQUEST.decode()


def test_region_taken_from_queue_url() -> None:
    assert region_from_url("https://sqs.eu-west-1.amazonaws.com/1/q") == "eu-west-1"
    vpce = "https://vpce-0a1b2c-x1y2.sqs.ap-southeast-2.vpce.amazonaws.com/1/q"
    assert region_from_url(vpce) == "ap-southeast-2"
    assert region_from_url("http://127.0.0.1:4566/1/q") is None
    assert region_from_url(None) is None


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/1/q", None),
        ("https://sqs.cn-north-1.amazonaws.com.cn/1/q", None),
        ("https://queue.amazonaws.com/1/q", None),
        ("https://us-west-2.queue.amazonaws.com/1/q", None),
        ("https://vpce-0a1b2c-x1y2.sqs.us-east-1.vpce.amazonaws.com/1/q",
         "https://vpce-0a1b2c-x1y2.sqs.us-east-1.vpce.amazonaws.com"),
        ("http://127.0.0.1:4566/000000000000/q", "http://127.0.0.1:4566"),
        ("http://user:pw@[::1]:9324/queue/q", "http://[::1]:9324"),
        (None, None),
    ],
)  # fmt: skip
def test_endpoint_taken_from_a_queue_url_that_is_not_aws(url: str | None, endpoint: str) -> None:
    assert endpoint_from_url(url) == endpoint


def test_pcapdaemon_keys_alone_reach_the_server_named_in_url(moto_sqs: MotoServer) -> None:
    """No endpoint, no region: the queue URL says where (here moto_server)."""
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    assert url.startswith(moto_sqs.endpoint)
    client.send_message(QueueUrl=url, MessageBody=REQUEST.decode())
    consumer = Consumer(SqsSource(sqs_config(moto_sqs, url, endpoint=None, region=None)))
    try:
        delivery = consumer.take()
        assert delivery.body == REQUEST
        delivery.ack()
        wait_for(lambda: counts(client, url) == (0, 0))
    finally:
        consumer.close()


def test_one_receiver_thread_for_every_receive_call(moto_sqs: MotoServer) -> None:
    """Each ReceiveMessage is billed; each must not start a thread either."""
    url = moto_sqs.new_queue()
    calls: list[dict[str, Any]] = []
    source = SqsSource(
        sqs_config(moto_sqs, url, waitseconds=1), counting_factory("provide-client-params", calls)
    )
    # Other tests' sources may still be finishing a poll on their own threads.
    before = {t for t in threading.enumerate() if t.name == "sqs-receive"}
    consumer = Consumer(source)
    receivers: set[threading.Thread] = set()
    try:
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            receivers.update(t for t in threading.enumerate() if t.name == "sqs-receive")
            time.sleep(0.02)
        receivers -= before
    finally:
        consumer.close()
    # An empty queue long-polls for waitseconds=1 per call: about three calls.
    assert 3 <= len(calls) <= 5, calls
    assert len(receivers) == 1, receivers


def test_is_a_trigger_source(moto_sqs: MotoServer) -> None:
    source: TriggerSource = SqsSource(sqs_config(moto_sqs, "http://127.0.0.1:1/1/q"))
    assert source.name == "sqs"


def test_source_without_url_is_refused() -> None:
    with pytest.raises(ValueError, match=r"sqs\.url"):
        SqsSource(SqsConfig(listen=True))


def test_sns_envelope_over_the_size_limit_or_holding_a_surrogate(moto_sqs: MotoServer) -> None:
    """max_request_bytes holds before any JSON is read: an SNS notification over
    it is handed on as received, and the parser rejects it by its size. A
    notification whose request holds a lone surrogate (escaped in the
    envelope, raw once unwrapped) reaches the parser intact, rather than
    killing the source's thread."""
    client = moto_sqs.client()
    url = moto_sqs.new_queue()
    big = json.dumps({"node": "any", "interface": "lo", "x": "y" * 3000})
    envelope = json.dumps({"Type": "Notification", "TopicArn": "arn:t", "Message": big})
    poison = json.dumps({"Type": "Notification", "TopicArn": "arn:t", "Message": '{"x":"\ud800"}'})
    client.send_message(QueueUrl=url, MessageBody=envelope)
    client.send_message(QueueUrl=url, MessageBody=poison)
    consumer = Consumer(SqsSource(sqs_config(moto_sqs, url), max_request_bytes=2048))
    try:
        bodies = sorted([consumer.take().body, consumer.take().body], key=len)
    finally:
        consumer.close()
    assert bodies[1] == envelope.encode()
    with pytest.raises(RequestError, match=f"request is {len(envelope)} bytes; the limit is 2048"):
        decode_body(bodies[1], 2048)
    # Intact, for the parser to reject naming the field (tests/pcapd/core).
    assert decode_body(bodies[0], 2048) == {"x": "\ud800"}
    assert unwrap_sns(envelope, max_bytes=len(envelope)) == big
