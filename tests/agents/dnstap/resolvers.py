"""Real BIND 9.18 and Unbound 1.17 for the dnstap tests, on free loopback
ports, in the foreground, with a local zone only: nothing leaves 127.0.0.1.

The config snippets here are the ones docs/dnstap.md quotes.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port, stop_process, wait_for

ZONE = "example.test."
ZONE_FILE = """$TTL 300
@        IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 300
@        IN NS  ns1.example.test.
ns1      IN A   127.0.0.1
www      IN A   192.0.2.10
www      IN A   192.0.2.11
www      IN AAAA 2001:db8::10
alias    IN CNAME mid.example.test.
mid      IN CNAME target.example.test.
target   IN A   198.51.100.7
target   IN AAAA 2001:db8:0:1::7
MiXeD    IN A   203.0.113.5
v6only   IN AAAA 2001:db8::66
away     IN CNAME elsewhere.invalid.
$GENERATE 1-95 big IN A 192.0.2.$
"""

NAMED_CONF = """options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    listen-on port {port} {{ {listen}; }};
    listen-on-v6 port {port} {{ {listen6}; }};
    recursion no;
    dnssec-validation no;
    notify no;
    check-names primary ignore;
    dnstap {{ client response; }};
    dnstap-output unix "{socket}";
    dnstap-identity "bind-test";
    fstrm-set-reopen-interval 1;
{extra}}};
controls {{ }};
zone "example.test" {{
    type primary;
    file "{dir}/example.test.zone";
}};
"""

UNBOUND_CONF = """server:
    interface: {listen}@{port}
    port: {port}
    do-ip6: no
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    module-config: "iterator"
    qname-minimisation: no
    do-not-query-localhost: no
    access-control: 0.0.0.0/0 allow
    local-zone: "." refuse
    local-zone: "example.test." transparent
    domain-insecure: "example.test."
stub-zone:
    name: "example.test."
    stub-addr: {bind_addr}@{bind_port}
dnstap:
    dnstap-enable: {dnstap}
{dnstap_target}
    dnstap-send-identity: yes
    dnstap-identity: "unbound-test"
    dnstap-log-client-response-messages: yes
"""


@dataclass
class Resolver:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)


def dig(
    port: int,
    name: str,
    qtype: str = "A",
    source: str = "127.0.0.1",
    *,
    server: str = "127.0.0.1",
    netns: str | None = None,
    options: tuple[str, ...] = (),
) -> str:
    """`+short` answers; `netns`: ask from inside that network namespace."""
    wrap = ["ip", "netns", "exec", netns] if netns else []
    out = subprocess.run(
        [*wrap, "dig", f"@{server}", "-p", str(port), "-b", source, name, qtype,
         "+tries=1", "+time=2", "+short", *options],
        capture_output=True, text=True, check=False, timeout=10,
    )  # fmt: skip
    return out.stdout


# dig's options for the status line and the answer section (not +short)
STATUS_AND_ANSWER = ("+noshort", "+noall", "+comments", "+answer")
PROBE_ANSWER = re.compile(r"^ns1\.example\.test\.\s+\d+\s+IN\s+A\s+127\.0\.0\.1$", re.M)


def serves_zone(port: int, server: str = "127.0.0.1", netns: str | None = None) -> bool:
    """The resolver serves the zone: a name in it is answered NOERROR with
    its address. `+short` output is no proof: it holds dig's ";; communications
    error" before the port listens, and is empty for the SERVFAIL a fresh
    named gives while it still loads the zone."""
    out = dig(port, "ns1.example.test", source=server, server=server, netns=netns,
              options=STATUS_AND_ANSWER)  # fmt: skip
    return "status: NOERROR," in out and PROBE_ANSWER.search(out) is not None


@contextlib.contextmanager
def bind(
    workdir: Path,
    socket_path: Path,
    *,
    listen: str = "127.0.0.1",
    listen6: str | None = None,
    port: int | None = None,
    netns: str | None = None,
    extra: str = "",
    zone: str = ZONE_FILE,
) -> Iterator[Resolver]:
    """By default on a free loopback port; `netns`, `listen` (and `listen6`,
    `port`) put it inside a test's namespace. `extra`: more options lines."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    (workdir / "example.test.zone").write_text(zone)
    conf = workdir / "named.conf"
    conf.write_text(
        NAMED_CONF.format(dir=workdir, port=port, socket=socket_path, listen=listen,
                          listen6=listen6 or "none", extra=extra)
    )  # fmt: skip
    log = workdir / "named.log"
    named = shutil.which("named") or "/usr/sbin/named"
    wrap = ["ip", "netns", "exec", netns] if netns else []
    with log.open("wb") as out:
        # -g: foreground, log to stderr, and stay root (no -u): it can write
        # the temp dir; AppArmor confines named only when systemd starts it.
        family = [] if listen6 else ["-4"]
        proc = subprocess.Popen(
            [*wrap, named, "-g", *family, "-c", str(conf)], stdout=out, stderr=out
        )
    resolver = Resolver("bind", port, proc, log)
    try:
        wait_for(lambda: proc.poll() is not None or serves_zone(port, listen, netns), timeout=20)
        if proc.poll() is not None:
            raise AssertionError(f"named exited: {log.read_text()[-2000:]}")
        yield resolver
    finally:
        resolver.stop()


@contextlib.contextmanager
def unbound(
    workdir: Path,
    bind_port: int,
    *,
    socket_path: Path | None = None,
    tcp_port: int | None = None,
    tls: tuple[str, str] | None = None,
    listen: str = "127.0.0.1",
    port: int | None = None,
    bind_addr: str = "127.0.0.1",
    netns: str | None = None,
) -> Iterator[Resolver]:
    """dnstap to `socket_path`, or to TCP `tcp_port`, with TLS if `tls` is
    (CA bundle, server name); none if neither. `netns`, `listen`, `port`
    put it inside a test's namespace."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if socket_path is None and tcp_port is None:
        target = ""
    elif socket_path is not None:
        target = f'    dnstap-socket-path: "{socket_path}"'
    elif tls is None:
        target = f'    dnstap-ip: "127.0.0.1@{tcp_port}"\n    dnstap-tls: no'
    else:
        target = (
            f'    dnstap-ip: "127.0.0.1@{tcp_port}"\n    dnstap-tls: yes\n'
            f'    dnstap-tls-cert-bundle: "{tls[0]}"\n    dnstap-tls-server-name: "{tls[1]}"'
        )
    conf = workdir / "unbound.conf"
    conf.write_text(
        UNBOUND_CONF.format(dir=workdir, port=port, bind_port=bind_port, dnstap_target=target,
                            listen=listen, bind_addr=bind_addr,
                            dnstap="yes" if target else "no")
    )  # fmt: skip
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = workdir / "unbound.log"
    wrap = ["ip", "netns", "exec", netns] if netns else []
    with log.open("wb") as out:
        proc = subprocess.Popen([*wrap, "unbound", "-d", "-c", str(conf)], stdout=out, stderr=out)
    resolver = Resolver("unbound", port, proc, log)
    try:
        wait_for(lambda: proc.poll() is not None or serves_zone(port, listen, netns), timeout=20)
        if proc.poll() is not None:
            raise AssertionError(f"unbound exited: {log.read_text()[-2000:]}")
        yield resolver
    finally:
        resolver.stop()
