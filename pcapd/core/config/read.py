"""The section readers: one TOML table each -> its frozen section value, every
problem collected on the `Table` with its dotted path."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pcapd.core.config.sections import *
from pcapd.core.configread import MAX_PORT, Table
from pcapd.core.fields import bpf_problem

DLT_EN10MB = 1  # Ethernet: the link type a lookback_bpf is checked against at load


def _general(section: Table, hostname: str) -> GeneralConfig:
    s = section
    maxbytes = s.get_int("maxbytes", DEFAULT_MAXBYTES, minimum=MIN_MAXBYTES, maximum=MAX_MEMORY)
    max_memory = s.get_int(
        "max_memory", DEFAULT_MAX_MEMORY, minimum=MIN_MAX_MEMORY, maximum=MAX_MEMORY
    )
    maxtimeout = s.get_int("maxtimeout", DEFAULT_MAXTIMEOUT, maximum=MAX_SECONDS)
    maxduration = s.get_int("maxduration", DEFAULT_MAXDURATION, maximum=MAX_SECONDS)
    general = GeneralConfig(
        node=s.get_str("node", hostname) or hostname,
        maxpackets=s.get_int("maxpackets", DEFAULT_MAXPACKETS, maximum=MAX_PACKETS),
        writelocal=s.get_bool("writelocal", False),
        localdir=s.get_str("localdir", DEFAULT_LOCALDIR),
        snaplength=s.get_int("snaplength", DEFAULT_SNAPLENGTH, maximum=MAX_SNAPLENGTH),
        defaulttimeout=s.get_int(
            "defaulttimeout", min(DEFAULT_TIMEOUT, maxtimeout), maximum=MAX_SECONDS
        ),
        maxtimeout=maxtimeout,
        maxduration=maxduration,
        maxbytes=maxbytes,
        packetdebug=s.get_bool("packetdebug", False),
        defaultduration=s.get_int("defaultduration", maxduration, maximum=MAX_SECONDS),
        format=s.get_str("format", DEFAULT_FORMAT, choices=FORMATS),
        max_concurrent=s.get_int("max_concurrent", DEFAULT_MAX_CONCURRENT, maximum=MAX_CONCURRENT),
        max_memory=max_memory,
        buffer_size=s.get_int(
            "buffer_size", DEFAULT_BUFFER_SIZE, minimum=MIN_BUFFER_SIZE, maximum=MAX_BUFFER_SIZE
        ),
        max_request_bytes=s.get_int(
            "max_request_bytes",
            DEFAULT_MAX_REQUEST_BYTES,
            minimum=MIN_MAX_REQUEST_BYTES,
            maximum=MAX_MAX_REQUEST_BYTES,
        ),
        log_format=s.get_str("log_format", DEFAULT_LOG_FORMAT, choices=LOG_FORMATS),
        log_level=s.get_str("log_level", DEFAULT_LOG_LEVEL, choices=LOG_LEVELS),
        logrequests=s.get_bool("logrequests", False),
        naming=s.get_str("naming", DEFAULT_NAMING, choices=NAMINGS),
        maxlookback=s.get_int("maxlookback", DEFAULT_MAXLOOKBACK, maximum=MAX_LOOKBACK),
    )
    if general.defaulttimeout > general.maxtimeout:
        s.exceeds("defaulttimeout", general.defaulttimeout, "maxtimeout", general.maxtimeout)
    if general.defaultduration > general.maxduration:
        s.exceeds("defaultduration", general.defaultduration, "maxduration", general.maxduration)
    if general.maxbytes > general.max_memory:
        s.exceeds(
            "maxbytes", general.maxbytes, "max_memory", general.max_memory,
            "a capture of that size could never be admitted",
        )  # fmt: skip
    return general


def _redis(s: Table) -> RedisConfig:
    url = s.secret("url")
    if url is not None:
        scheme = urlsplit(url.reveal()).scheme
        if scheme not in REDIS_URL_SCHEMES:
            s.errors.append(f"redis.url: scheme {scheme!r} is not one of {REDIS_URL_SCHEMES_TEXT}")
        try:
            _ = urlsplit(url.reveal()).port  # raises on a bad or out-of-range port
        except ValueError as exc:
            s.errors.append(f"redis.url: {exc}")
    config = RedisConfig(
        listen=s.get_bool("listen", True),
        host=s.get_str("host", DEFAULT_REDIS_HOST),
        port=s.get_int("port", DEFAULT_REDIS_PORT, maximum=MAX_PORT),
        channel=s.get_str("channel", DEFAULT_CHANNEL) or DEFAULT_CHANNEL,
        auth=s.secret("auth"),
        username=s.optional_str("username"),
        db=s.get_int("db", 0, minimum=0, maximum=MAX_REDIS_DB),
        url=url,
        tls=s.get_bool("tls", False),
        tls_ca=s.optional_str("tls_ca"),
        results_channel=s.get_str("results_channel", DEFAULT_RESULTS_CHANNEL),
        results_stream=s.get_str("results_stream", DEFAULT_RESULTS_STREAM),
        results_stream_maxlen=s.get_int(
            "results_stream_maxlen",
            DEFAULT_RESULTS_STREAM_MAXLEN,
            maximum=MAX_RESULTS_STREAM_MAXLEN,
        ),
        health_check_interval=s.get_int(
            "health_check_interval",
            DEFAULT_HEALTH_CHECK_INTERVAL,
            maximum=MAX_HEALTH_CHECK_INTERVAL,
        ),
        stream_listen=s.get_bool("stream_listen", False),
        stream=s.get_str("stream", DEFAULT_REQUEST_STREAM),
        pubsub_queue_bytes=s.get_int(
            "pubsub_queue_bytes",
            DEFAULT_PUBSUB_QUEUE_BYTES,
            minimum=MIN_PUBSUB_QUEUE_BYTES,
            maximum=MAX_PUBSUB_QUEUE_BYTES,
        ),
        cluster=s.get_bool("cluster", False),
        nodes=_cluster_nodes(s),
        sharded_pubsub=s.get_bool("sharded_pubsub", False),
    )
    _check_cluster(s, config)
    return config


def _cluster_nodes(s: Table) -> tuple[str, ...]:
    """`HOST:PORT` seeds (`[::1]:7000` for IPv6), each checked."""
    nodes = s.str_list("nodes")
    if len(nodes) > MAX_CLUSTER_NODES:
        s.bad("nodes", f"{len(nodes)} nodes", f"at most {MAX_CLUSTER_NODES} seed nodes")
        return ()
    for node in nodes:
        host, sep, port = node.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
            s.bad("nodes", node, f"each node must be HOST:PORT with a port in 1..{MAX_PORT}")
            return ()
    return nodes


def _check_cluster(s: Table, config: RedisConfig) -> None:
    """What a cluster cannot do, named by the field that asks for it."""
    if config.nodes and not config.cluster:
        s.error("nodes", "seed nodes are for a cluster: set cluster = true as well")
    if not config.clustered:
        return
    url = config.url.reveal() if config.url is not None else None
    unix = url is not None and urlsplit(url).scheme == "unix"
    if unix:
        s.error("url", "a cluster is reached over TCP: unix:// cannot be a cluster seed")
    if config.db != 0:
        s.bad("db", config.db, "a Redis Cluster has only database 0")
    if url is not None and not unix and urlsplit(url).path.strip("/") not in ("", "0"):
        s.bad("url", urlsplit(url).path, "a Redis Cluster has only database 0 (path /0 or none)")


def _syslog(s: Table) -> SyslogConfig:
    return SyslogConfig(
        enabled=s.get_bool("enabled", s.present),
        priority=s.get_int(
            "priority", DEFAULT_SYSLOG_PRIORITY, minimum=0, maximum=MAX_SYSLOG_PRIORITY
        ),
        tag=s.get_str("tag", DEFAULT_SYSLOG_TAG),
        address=s.get_str("address", DEFAULT_SYSLOG_ADDRESS),
    )


def _interfaces(raw: Any, errors: list[str], warnings: list[str]) -> tuple[InterfaceConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append("interface: expected [[interface]] tables")
        return ()
    found = []
    names: set[str] = set()
    for index, table in enumerate(raw):
        s = Table(table, f"interface[{index}]", errors, warnings)
        name = s.get_str("name", "")
        if not name:
            errors.append(f"interface[{index}].name: required")
        elif name in names:
            errors.append(f"interface[{index}].name: {name!r} is defined twice")
        names.add(name)
        found.append(_interface(s, name))
        s.finish()
    return tuple(found)


def _interface(s: Table, name: str) -> InterfaceConfig:
    """One [[interface]]; its ring fields only with `lookback` > 0, and its
    `lookback_bpf` printable ASCII that compiles (for Ethernet here; for the
    interface's real link type when the ring opens)."""
    lookback = s.get_int("lookback", DEFAULT_LOOKBACK, minimum=0, maximum=MAX_LOOKBACK)
    lookback_bytes = s.get_int(
        "lookback_bytes", DEFAULT_LOOKBACK_BYTES,
        minimum=MIN_LOOKBACK_BYTES, maximum=MAX_MEMORY,
    )  # fmt: skip
    bpf = s.get_str("lookback_bpf", "")
    if bpf:
        problem = bpf_problem(bpf) or bpf_compile_problem(bpf)
        if problem is not None:
            s.bad("lookback_bpf", bpf, problem)
            bpf = ""
    if not lookback:
        for key in ("lookback_bytes", "lookback_bpf"):
            if key in s.table:
                s.error(key, "only used with lookback > 0 (seconds the ring keeps)")
    return InterfaceConfig(
        name=name, aliases=s.str_list("alias"),
        lookback=lookback, lookback_bytes=lookback_bytes, lookback_bpf=bpf,
    )  # fmt: skip


def bpf_compile_problem(bpf: str) -> str | None:
    """Why libpcap cannot compile `bpf` for Ethernet, or None. Only text that
    passed `bpf_problem` comes here."""
    import pcap  # the C extension; only configs with a lookback_bpf load it

    try:
        pcap.bpf(bpf.encode(), DLT_EN10MB)
    except OSError as exc:
        return f"does not compile as a filter for Ethernet ({exc})"
    return None


def check_rings(general: GeneralConfig, interfaces: tuple[InterfaceConfig, ...]) -> list[str]:
    """The rings' memory comes out of max_memory, leaving room for a capture
    of maxbytes, and no ring keeps less than a request may ask for."""
    errors = []
    rings = [(i, iface) for i, iface in enumerate(interfaces) if iface.lookback]
    held = sum(iface.lookback_bytes for _, iface in rings)
    if held and held + general.maxbytes > general.max_memory:
        where = ", ".join(f"interface[{i}].lookback_bytes={iface.lookback_bytes}"
                          for i, iface in rings)  # fmt: skip
        errors.append(
            f"{where}: rings hold {held} of general.max_memory={general.max_memory}, "
            f"leaving {max(0, general.max_memory - held)}, below general.maxbytes="
            f"{general.maxbytes}: a capture of maxbytes could never be admitted"
        )
    return errors


def _cloudshark(s: Table) -> CloudsharkConfig:
    # pcapdaemon's `timeout` (seconds for the whole upload) is read_timeout's
    # default here: the connect timeout stays separate and never exceeds it.
    timeout = s.get_float(
        "timeout", DEFAULT_CS_READ_TIMEOUT, minimum=MIN_CS_TIMEOUT, maximum=MAX_CS_READ_TIMEOUT
    )
    if "timeout" in s.table and "read_timeout" in s.table:
        s.errors.append("cloudshark.timeout, cloudshark.read_timeout: set one, not both")
    config = CloudsharkConfig(
        upload=s.get_bool("upload", False),
        host=s.get_str("host", DEFAULT_CS_HOST),
        scheme=s.get_str("scheme", DEFAULT_CS_SCHEME, choices=CS_SCHEMES),
        port=s.optional_int("port", maximum=MAX_PORT),
        token=s.secret("token"),
        ca_bundle=s.optional_str("ca_bundle"),
        connect_timeout=s.get_float(
            "connect_timeout", min(DEFAULT_CS_CONNECT_TIMEOUT, timeout),
            minimum=MIN_CS_TIMEOUT, maximum=MAX_CS_CONNECT_TIMEOUT,
        ),
        read_timeout=s.get_float(
            "read_timeout", timeout, minimum=MIN_CS_TIMEOUT, maximum=MAX_CS_READ_TIMEOUT
        ),
    )  # fmt: skip
    if config.upload and not config.token:
        s.errors.append("cloudshark.token: required when cloudshark.upload = true")
    return config


def _s3(s: Table) -> S3Config:
    config = S3Config(
        upload=s.get_bool("upload", False),
        accessid=s.optional_str("accessid"),
        accesskey=s.secret("accesskey"),
        endpoint=s.optional_str("endpoint"),
        bucket=s.optional_str("bucket"),
        folder=s.get_str("folder", ""),
        region=s.optional_str("region"),
        acl=s.optional_str("acl"),
        encryption=s.get_bool("encryption", False),
        sse=s.optional_str("sse", choices=SSE_MODES),
        kms_key_id=s.optional_str("kms_key_id"),
        allowed_buckets=s.str_list("allowed_buckets"),
        allowed_endpoints=s.str_list("allowed_endpoints"),
        allowed_acls=s.str_list("allowed_acls"),
        allowed_regions=s.str_list("allowed_regions"),
        multipart_threshold=s.get_int(
            "multipart_threshold",
            DEFAULT_MULTIPART_THRESHOLD,
            minimum=MIN_MULTIPART_THRESHOLD,
            maximum=MAX_MULTIPART_THRESHOLD,
        ),
    )
    if config.upload and not config.bucket:
        s.errors.append("s3.bucket: required when s3.upload = true")
    if bool(config.accessid) != bool(config.accesskey):
        s.errors.append("s3.accessid, s3.accesskey: set both, or neither for boto3's chain")
    if config.kms_key_id and config.sse != "aws:kms":
        s.errors.append('s3.kms_key_id: only used with sse = "aws:kms"')
    return config


def _sqs(s: Table) -> SqsConfig:
    waitseconds = DEFAULT_SQS_WAIT
    if s.table.get("waitseconds") == 0 and s.table["waitseconds"] is not False:
        s.seen.add("waitseconds")
        s.errors.append(
            "sqs.waitseconds: 0 turns long polling off, so every empty reply is followed at "
            f"once by the next billed ReceiveMessage: use {MIN_SQS_WAIT}..{MAX_SQS_WAIT} "
            f"(default {DEFAULT_SQS_WAIT})"
        )
    else:
        waitseconds = s.get_int(
            "waitseconds", DEFAULT_SQS_WAIT, minimum=MIN_SQS_WAIT, maximum=MAX_SQS_WAIT
        )
    config = SqsConfig(
        listen=s.get_bool("listen", False),
        region=s.optional_str("region"),
        accessid=s.optional_str("accessid"),
        accesskey=s.secret("accesskey"),
        url=s.optional_str("url"),
        endpoint=s.optional_str("endpoint"),
        waitseconds=waitseconds,
        chunksize=s.get_int("chunksize", DEFAULT_SQS_CHUNK, maximum=MAX_SQS_CHUNK),
        visibility_timeout=s.get_int(
            "visibility_timeout", DEFAULT_SQS_VISIBILITY, maximum=MAX_SQS_VISIBILITY
        ),
        not_for_me=s.get_str("not_for_me", DEFAULT_NOT_FOR_ME, choices=NOT_FOR_ME),
    )
    if config.listen and not config.url:
        s.errors.append("sqs.url: required when sqs.listen = true")
    if bool(config.accessid) != bool(config.accesskey):
        s.errors.append("sqs.accessid, sqs.accesskey: set both, or neither for boto3's chain")
    return config


def _delivery(s: Table) -> DeliveryConfig:
    initial = s.get_float(
        "backoff_initial", DEFAULT_BACKOFF_INITIAL, minimum=0.0, maximum=MAX_BACKOFF
    )
    config = DeliveryConfig(
        attempts=s.get_int("attempts", DEFAULT_UPLOAD_ATTEMPTS, maximum=MAX_UPLOAD_ATTEMPTS),
        backoff_initial=initial,
        backoff_max=s.get_float(
            "backoff_max", max(DEFAULT_BACKOFF_MAX, initial), minimum=0.0, maximum=MAX_BACKOFF
        ),
        upload_workers=s.get_int(
            "upload_workers", DEFAULT_UPLOAD_WORKERS, maximum=MAX_UPLOAD_WORKERS
        ),
        spool_dir=s.get_str("spool_dir", DEFAULT_SPOOL_DIR),
        spool_max_bytes=s.get_int(
            "spool_max_bytes",
            DEFAULT_SPOOL_MAX_BYTES,
            minimum=MIN_SPOOL_MAX_BYTES,
            maximum=MAX_SPOOL_MAX_BYTES,
        ),
        drain_interval=s.get_float(
            "drain_interval",
            DEFAULT_DRAIN_INTERVAL,
            minimum=MIN_DRAIN_INTERVAL,
            maximum=MAX_DRAIN_INTERVAL,
        ),
        attempt_timeout=s.get_float(
            "attempt_timeout",
            DEFAULT_ATTEMPT_TIMEOUT,
            minimum=MIN_ATTEMPT_TIMEOUT,
            maximum=MAX_ATTEMPT_TIMEOUT,
        ),
        shutdown_grace=s.get_float(
            "shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
            minimum=MIN_SHUTDOWN_GRACE,
            maximum=MAX_SHUTDOWN_GRACE,
        ),
    )
    if config.backoff_max < config.backoff_initial:
        s.errors.append(
            f"delivery.backoff_max: {config.backoff_max} is below "
            f"backoff_initial={config.backoff_initial}"
        )
    return config


def _security(s: Table) -> SecurityConfig:
    config = SecurityConfig(
        keys=s.secret_map("keys"),
        require_signed=s.get_bool("require_signed", False),
        max_skew=s.get_int("max_skew", DEFAULT_MAX_SKEW, maximum=MAX_SKEW),
        dedup_window=s.get_int("dedup_window", DEFAULT_DEDUP_WINDOW, maximum=MAX_SECONDS),
        dedup_prefix=s.get_str("dedup_prefix", DEFAULT_DEDUP_PREFIX),
    )
    if not config.dedup_prefix or len(config.dedup_prefix) > MAX_PREFIX_LEN:
        s.errors.append(f"security.dedup_prefix: must be 1 to {MAX_PREFIX_LEN} characters")
    if config.require_signed and not config.keys:
        s.errors.append("security.keys: required when security.require_signed = true")
    return config


def _fleet(s: Table) -> FleetConfig:
    config = FleetConfig(
        prefix=s.get_str("prefix", DEFAULT_FLEET_PREFIX),
        heartbeat_interval=s.get_float(
            "heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL,
            minimum=MIN_HEARTBEAT_INTERVAL, maximum=MAX_HEARTBEAT_INTERVAL,
        ),
    )  # fmt: skip
    if not config.prefix or len(config.prefix) > MAX_PREFIX_LEN:
        s.errors.append(f"fleet.prefix: {config.prefix!r} must be 1 to {MAX_PREFIX_LEN} characters")
    return config


def _correlator(s: Table, security: SecurityConfig) -> CorrelatorConfig:
    max_packets = s.get_int("max_packets", DEFAULT_CAPTURE_MAX_PACKETS)
    max_duration = s.get_int("max_duration", DEFAULT_CAPTURE_MAX_DURATION)
    config = CorrelatorConfig(
        host=s.get_str("host", "127.0.0.1") or "127.0.0.1",
        port=s.get_int("port", DEFAULT_CORRELATOR_PORT, maximum=65535),
        token=s.secret("token"),
        read_only=s.get_bool("read_only", False),
        kid=s.optional_str("kid"),
        page_size=s.get_int("page_size", DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE),
        scan_count=s.get_int("scan_count", DEFAULT_SCAN_COUNT, minimum=10, maximum=MAX_SCAN_COUNT),
        scan_budget=s.get_int("scan_budget", DEFAULT_SCAN_BUDGET, minimum=100),
        scan_seconds=s.get_float(
            "scan_seconds", DEFAULT_SCAN_SECONDS, minimum=0.01, maximum=MAX_SCAN_SECONDS
        ),
        keys_per_command=s.get_int(
            "keys_per_command", DEFAULT_KEYS_PER_COMMAND, maximum=MAX_KEYS_PER_COMMAND
        ),
        keys_per_pipeline=s.get_int("keys_per_pipeline", DEFAULT_KEYS_PER_PIPELINE),
        read_index=s.get_bool("read_index", True),
        max_client_keys=s.get_int("max_client_keys", DEFAULT_MAX_CLIENT_KEYS, minimum=10),
        max_prefix_clients=s.get_int("max_prefix_clients", DEFAULT_MAX_PREFIX_CLIENTS),
        nodere=s.str_list("nodere"),
        aliases=s.str_list("aliases"),
        default_packets=s.get_int("default_packets", min(DEFAULT_CAPTURE_PACKETS, max_packets)),
        max_packets=max_packets,
        default_duration=s.get_int("default_duration", min(DEFAULT_CAPTURE_DURATION, max_duration)),
        max_duration=max_duration,
        s3_url_expiry=s.get_int("s3_url_expiry", DEFAULT_S3_URL_EXPIRY, maximum=604_800),
        threads=s.get_int("threads", DEFAULT_WEB_THREADS, maximum=256),
        captures_shown=s.get_int("captures_shown", DEFAULT_CAPTURES_SHOWN, maximum=10_000),
        result_wait=s.get_int("result_wait", DEFAULT_RESULT_WAIT, maximum=MAX_RESULT_WAIT),
    )
    if config.kid and config.kid not in security.keys:
        s.errors.append(f"correlator.kid: {config.kid!r} is not a key in [security] keys")
    if config.keys_per_pipeline < config.keys_per_command:
        s.exceeds("keys_per_command", config.keys_per_command, "keys_per_pipeline",
                  config.keys_per_pipeline, "a pipeline holds at least one command")  # fmt: skip
    if config.default_packets > config.max_packets:
        s.errors.append(f"correlator.default_packets: {config.default_packets} exceeds "
                        f"max_packets={config.max_packets}")  # fmt: skip
    if config.default_duration > config.max_duration:
        s.errors.append(f"correlator.default_duration: {config.default_duration} exceeds "
                        f"max_duration={config.max_duration}")  # fmt: skip
    return config


def _metrics(s: Table) -> MetricsConfig:
    return MetricsConfig(listen=s.listen("listen"))
